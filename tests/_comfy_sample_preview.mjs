#!/usr/bin/env node
// The upload widgets' previews of shipped samples in the real ComfyUI frontend (headless Chromium): loads a
// workflow, records every /view request the page makes and its HTTP status, and whether each PVTT Load Image
// node shows a decoded preview image. Prints one line "REPORT {json}".
//
// Usage: node tests/_comfy_sample_preview.mjs WORKFLOW_UI.json [--url http://127.0.0.1:8197] [--node-dir DIR]
import { createRequire } from 'module';
import fs from 'fs';
import os from 'os';
import path from 'path';

const args = process.argv.slice(2);
const opt = { url: 'http://127.0.0.1:8197', nodeDir: '/tmp/comfyrig/node' };
const pos = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--url') opt.url = args[++i];
  else if (args[i] === '--node-dir') opt.nodeDir = args[++i];
  else pos.push(args[i]);
}
const wf = JSON.parse(fs.readFileSync(pos[0], 'utf8'));
const report = { views: [], errors: [] };
const { chromium } = createRequire(path.join(opt.nodeDir, 'noop.js'))('playwright-core');
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'pvtt-preview-'));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium', headless: true, viewport: { width: 1400, height: 900 },
  args: ['--no-sandbox', '--disable-gpu'],
});
try {
  await ctx.route('**/*', r => {
    const u = new URL(r.request().url());
    return ['127.0.0.1', 'localhost'].includes(u.hostname) || !u.protocol.startsWith('http') ? r.continue() : r.abort();
  });
  const page = ctx.pages()[0] ?? await ctx.newPage();
  page.on('pageerror', e => report.errors.push(String(e)));
  page.on('response', r => { if (new URL(r.url()).pathname.endsWith('/view')) report.views.push({ url: r.url(), status: r.status() }); });
  await page.goto(opt.url + '/', { waitUntil: 'load' });
  await page.waitForFunction(() => window.app?.graph && window.app.canvas, null, { timeout: 120000 });
  await page.waitForTimeout(1000);
  for (let i = 0; i < 3 && await page.locator('.p-dialog').count(); i++) { await page.keyboard.press('Escape'); await page.waitForTimeout(300); }
  await page.evaluate(async wf => { await app.loadGraphData(wf, true, true, 'pvtt-preview'); }, wf);
  await page.waitForTimeout(4000);
  report.images = await page.evaluate(() => app.graph.nodes.filter(n => n.type === 'PVTTLoadImage').map(n => ({
    id: n.id, value: n.widgets?.[0]?.value,
    decoded: (n.imgs ?? []).map(img => img.naturalWidth > 0 && img.complete) })));
} catch (e) {
  report.errors.push(String(e));
} finally {
  await ctx.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
console.log('REPORT ' + JSON.stringify(report));
