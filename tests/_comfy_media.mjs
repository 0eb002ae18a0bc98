#!/usr/bin/env node
// The designer's media path in the real ComfyUI frontend (headless Chromium): upload files through the
// nodes' own upload buttons, run the workflow, play the saved MP4 in a <video> element, and drop the MP4
// back onto the canvas to restore the workflow. Prints one line "REPORT {json}" at the end.
//
// Usage (a comfyrig server with this pack):
//   node tests/_comfy_media.mjs WORKFLOW_UI.json [--url http://127.0.0.1:8193] [--node-dir /tmp/comfyrig/node]
//        [--upload NODE_ID=FILE]...          press NODE_ID's upload button and pick FILE in the file chooser
//        [--upload-to NODE_ID=FILE@SUBFOLDER]  POST FILE to /upload/image in SUBFOLDER, set the node's file widget
//        [--connect SRC_ID:SLOT->DST_ID:INPUT]... add a link before queueing
//        [--timeout 300]
import { createRequire } from 'module';
import fs from 'fs';
import os from 'os';
import path from 'path';

const args = process.argv.slice(2);
const opt = { url: 'http://127.0.0.1:8193', nodeDir: '/tmp/comfyrig/node', timeout: 300, uploads: [], uploadsTo: [], connects: [] };
const pos = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === '--url') opt.url = args[++i];
  else if (a === '--node-dir') opt.nodeDir = args[++i];
  else if (a === '--timeout') opt.timeout = Number(args[++i]);
  else if (a === '--upload') opt.uploads.push(args[++i]);
  else if (a === '--upload-to') opt.uploadsTo.push(args[++i]);
  else if (a === '--connect') opt.connects.push(args[++i]);
  else pos.push(a);
}
const wf = JSON.parse(fs.readFileSync(pos[0], 'utf8'));
const report = { uploads: {}, errors: [] };
const { chromium } = createRequire(path.join(opt.nodeDir, 'noop.js'))('playwright-core');
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'pvtt-media-'));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium', headless: true, viewport: { width: 1400, height: 900 },
  args: ['--no-sandbox', '--disable-gpu', '--autoplay-policy=no-user-gesture-required'],
});
try {
  await ctx.route('**/*', r => {
    const u = new URL(r.request().url());
    return ['127.0.0.1', 'localhost'].includes(u.hostname) || !u.protocol.startsWith('http') ? r.continue() : r.abort();
  });
  const page = ctx.pages()[0] ?? await ctx.newPage();
  page.on('pageerror', e => report.errors.push(String(e)));
  await page.goto(opt.url + '/', { waitUntil: 'load' });
  await page.waitForFunction(() => window.app?.graph && window.app.canvas, null, { timeout: 120000 });
  await page.waitForTimeout(1000);
  for (let i = 0; i < 3 && await page.locator('.p-dialog').count(); i++) { await page.keyboard.press('Escape'); await page.waitForTimeout(300); }
  await page.evaluate(async wf => { await app.loadGraphData(wf, true, true, 'pvtt-media'); }, wf);
  // widget values by name right after loading: the upload button must not shift a saved workflow's values
  report.loaded_widgets = await page.evaluate(() => Object.fromEntries(app.graph.nodes.map(n => [n.id,
    (n.widgets ?? []).map(w => [w.name, w.type, w.value])])));

  for (const spec of opt.uploads) {  // through the node's own upload button and the browser's file chooser
    const [id, file] = spec.split(/=(.*)/s);
    const chooser = page.waitForEvent('filechooser', { timeout: 30000 });
    const combo = await page.evaluate(id => {
      const node = app.graph.getNodeById(Number(id));
      const button = node.widgets.find(w => w.type === 'button' && w.name === 'upload');
      if (!button) throw new Error(`node ${id} (${node.type}) has no upload button`);
      const combo = node.widgets.find(w => w.type === 'combo');
      button.callback(button, app.canvas, node);
      return combo.name;
    }, id);
    await (await chooser).setFiles(file);
    const name = path.basename(file);
    await page.waitForFunction(([id, combo, name]) => {
      const w = app.graph.getNodeById(Number(id)).widgets.find(w => w.name === combo);
      return String(w.value).endsWith(name);
    }, [id, combo, name], { timeout: 30000 });
    report.uploads[id] = await page.evaluate(([id, combo]) => ({
      value: app.graph.getNodeById(Number(id)).widgets.find(w => w.name === combo).value,
      options: app.graph.getNodeById(Number(id)).widgets.find(w => w.name === combo).options.values.length,
    }), [id, combo]);
  }
  for (const spec of opt.uploadsTo) {  // the upload API with a subfolder, then the file widget set to it
    const [id, rest] = spec.split(/=(.*)/s);
    const [file, subfolder] = rest.split('@');
    const bytes = [...fs.readFileSync(file)];
    report.uploads[id] = await page.evaluate(async ([id, name, bytes, subfolder]) => {
      const body = new FormData();
      body.append('image', new File([new Uint8Array(bytes)], name));
      body.append('subfolder', subfolder);
      body.append('type', 'input');
      const saved = await (await fetch('/upload/image', { method: 'POST', body })).json();
      const node = app.graph.getNodeById(Number(id));
      const combo = node.widgets.find(w => w.type === 'combo');
      combo.value = `${saved.subfolder}/${saved.name}`;
      return { value: combo.value, saved };
    }, [id, path.basename(file), bytes, subfolder]);
  }
  for (const spec of opt.connects) {
    const [, src, slot, dst, input] = spec.match(/^(\d+):(\d+)->(\d+):(\w+)$/);
    await page.evaluate(([src, slot, dst, input]) => {
      const link = app.graph.getNodeById(src).connect(slot, app.graph.getNodeById(dst), input);
      if (!link) throw new Error(`could not connect ${src}:${slot} -> ${dst}:${input}`);
    }, [Number(src), Number(slot), Number(dst), input]);
  }
  report.workflow_sent = await page.evaluate(() => app.graph.serialize());

  const response = page.waitForResponse(r => r.url().endsWith('/api/prompt') && r.request().method() === 'POST');
  await page.evaluate(() => app.queuePrompt(0, 1));
  const queued = await (await response).json();
  if (!queued.prompt_id) throw new Error(`prompt rejected: ${JSON.stringify(queued)}`);
  const deadline = Date.now() + opt.timeout * 1000;
  let entry;
  for (;;) {
    entry = (await (await fetch(`${opt.url}/history/${queued.prompt_id}`)).json())[queued.prompt_id];
    if (entry?.status?.completed || entry?.status?.status_str === 'error') break;
    if (Date.now() > deadline) throw new Error('timeout waiting for the prompt');
    await new Promise(r => setTimeout(r, 300));
  }
  report.status = entry.status.status_str;
  report.messages = entry.status.messages.filter(([k]) => k === 'execution_error');
  report.outputs = entry.outputs;
  const mp4s = Object.values(entry.outputs).flatMap(o => Object.values(o)).flat()
    .filter(f => f && typeof f.filename === 'string' && f.filename.endsWith('.mp4'));
  report.mp4s = mp4s;

  report.played = [];
  for (const f of mp4s) {  // the saved MP4 in a plain <video> element, as a browser or a web page shows it
    const src = `/view?filename=${encodeURIComponent(f.filename)}&subfolder=${encodeURIComponent(f.subfolder)}&type=${f.type}`;
    report.played.push(await page.evaluate(async src => {
      const v = document.createElement('video');
      v.muted = true; v.preload = 'auto'; v.src = src;
      document.body.append(v);
      const t0 = performance.now();
      await new Promise(resolve => {
        const done = () => resolve();
        v.addEventListener('loadeddata', done); v.addEventListener('error', done); setTimeout(done, 20000);
      });
      let played = false;
      try { await v.play(); await new Promise(r => setTimeout(r, 300)); played = v.currentTime > 0; } catch (e) { played = String(e); }
      const out = { src, readyState: v.readyState, duration: v.duration, width: v.videoWidth, height: v.videoHeight,
                    error: v.error && v.error.code, played, ms: Math.round(performance.now() - t0),
                    canPlayH264: v.canPlayType('video/mp4; codecs="avc1.64001f, mp4a.40.2"') };
      v.remove();
      return out;
    }, src));
  }

  report.dropped = [];
  for (const f of mp4s) {  // drag the MP4 onto an emptied canvas: the frontend reads the workflow from it
    const src = `/view?filename=${encodeURIComponent(f.filename)}&subfolder=${encodeURIComponent(f.subfolder)}&type=${f.type}`;
    report.dropped.push(await page.evaluate(async ([src, name]) => {
      app.graph.clear();
      const blob = await (await fetch(src)).blob();
      const file = new File([blob], name, { type: 'video/mp4' });
      const dt = new DataTransfer();
      dt.items.add(file);
      const target = app.canvasEl ?? document.querySelector('canvas');
      for (const type of ['dragenter', 'dragover', 'drop']) {
        target.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
      }
      for (let i = 0; i < 50 && app.graph.nodes.length === 0; i++) await new Promise(r => setTimeout(r, 100));
      await new Promise(r => setTimeout(r, 500));
      const g = app.graph.serialize();
      return { nodes: g.nodes.map(n => [n.id, n.type, n.widgets_values]).sort((a, b) => a[0] - b[0]),
               links: g.links.map(l => l.slice(0, 6)).sort((a, b) => a[0] - b[0]) };
    }, [src, f.filename]));
  }
} catch (e) {
  report.errors.push(`driver: ${e.stack || e}`);
} finally {
  await ctx.close();
  fs.rmSync(profile, { recursive: true, force: true });
  console.log('REPORT ' + JSON.stringify(report));
}
