#!/usr/bin/env node
// Render a workflow's Templates-dialog thumbnail from the real frontend: load the graph, run it
// (so the nodes show their previews), fit it to the view and screenshot just the graph.
//
// Usage (a comfyrig server with this pack and the workflow's model, started fresh so nothing is cached):
//   node tests/_comfy_thumbnail.mjs workflows/NAME.json SHOT.png [--url http://127.0.0.1:8190]
//        [--node-dir /tmp/comfyrig/node]
// then shrink SHOT.png to workflows/NAME.jpg (640 px wide, JPEG quality 85).
import { createRequire } from 'module';
import fs from 'fs';
import os from 'os';
import path from 'path';

const args = process.argv.slice(2);
const opt = { url: 'http://127.0.0.1:8190', nodeDir: '/tmp/comfyrig/node' };
const pos = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--url') opt.url = args[++i];
  else if (args[i] === '--node-dir') opt.nodeDir = args[++i];
  else pos.push(args[i]);
}
const [wfPath, out] = pos;
const wf = JSON.parse(fs.readFileSync(wfPath, 'utf8'));
const { chromium } = createRequire(path.join(opt.nodeDir, 'noop.js'))('playwright-core');
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'pvtt-thumb-'));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium', headless: true, viewport: { width: 1400, height: 900 },
  args: ['--no-sandbox', '--disable-gpu'],
});
try {
  // only the local server: the frontend's calls to api.comfy.org would hang the page
  await ctx.route('**/*', r => {
    const u = new URL(r.request().url());
    return ['127.0.0.1', 'localhost'].includes(u.hostname) || !u.protocol.startsWith('http') ? r.continue() : r.abort();
  });
  const page = ctx.pages()[0] ?? await ctx.newPage();
  await page.goto(opt.url + '/', { waitUntil: 'load' });
  await page.waitForFunction(() => window.app?.graph && window.app.canvas, null, { timeout: 120000 });
  await page.waitForTimeout(1000);
  for (let i = 0; i < 3 && await page.locator('.p-dialog').count(); i++) { await page.keyboard.press('Escape'); await page.waitForTimeout(300); }
  await page.evaluate(async wf => { await app.loadGraphData(wf, true, true, 'pvtt'); }, wf);
  const response = page.waitForResponse(r => r.url().endsWith('/api/prompt') && r.request().method() === 'POST');
  await page.evaluate(() => app.queuePrompt(0, 1));
  const promptId = (await (await response).json()).prompt_id;
  for (;;) {
    const history = await (await fetch(`${opt.url}/history/${promptId}`)).json();
    const status = history[promptId]?.status;
    if (status?.completed || status?.status_str === 'error') break;
    await new Promise(r => setTimeout(r, 300));
  }
  await page.waitForTimeout(1500);
  const clip = await page.evaluate(() => {
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const n of app.graph.nodes) {
      const b = n.boundingRect;
      x0 = Math.min(x0, b[0] - 10); y0 = Math.min(y0, b[1] - 10); x1 = Math.max(x1, b[0] + b[2] + 10); y1 = Math.max(y1, b[1] + b[3] + 10);
    }
    app.canvas.ds.fitToBounds([x0, y0, x1 - x0, y1 - y0]);
    app.canvas.setDirty(true, true);
    const ds = app.canvas.ds, r = app.canvas.canvas.getBoundingClientRect();
    return { x: (x0 + ds.offset[0]) * ds.scale + r.left, y: (y0 + ds.offset[1]) * ds.scale + r.top,
             width: (x1 - x0) * ds.scale, height: (y1 - y0) * ds.scale };
  });
  await page.evaluate(() => document.querySelectorAll('[class*=minimap]').forEach(e => { e.style.display = 'none'; }));
  await page.waitForTimeout(500);
  await page.screenshot({ path: out, clip });
  console.log(`thumbnail screenshot ${out}`);
} finally {
  await ctx.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
