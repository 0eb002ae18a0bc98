#!/usr/bin/env node
// Open ComfyUI's Templates dialog in the real frontend (headless Chromium), pick this pack's folder, and
// report what a designer sees: the card titles, the thumbnail and workflow requests the dialog made (status,
// decoded path), and what clicking a card loads onto the canvas. Used by tests/test_comfyui_templates_real.py.
//
// usage: node comfyui_templates_dialog.mjs URL MODULE TITLE_TO_OPEN SHOT.png
// env: COMFYRIG_NODE_DIR (where playwright-core is installed), CHROMIUM (default /usr/bin/chromium)
// stdout: one line "RESULT <json>"; exit 0 when the page could be driven, 4 otherwise.
import { createRequire } from 'module';
import fs from 'fs';
import os from 'os';
import path from 'path';

const [base, moduleName, openTitle, shotPath] = process.argv.slice(2);
if (!shotPath) { console.error('usage: node comfyui_templates_dialog.mjs URL MODULE TITLE_TO_OPEN SHOT.png'); process.exit(2); }
const require = createRequire(path.join(path.resolve(process.env.COMFYRIG_NODE_DIR || '/tmp/comfyrig/node'), 'noop.js'));
const { chromium } = require('playwright-core');
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pvtt-templates-'));
const result = { titles: [], opened: null, requests: [], pageErrors: [] };  // requests: [status, decoded path]
let ctx;
let code = 0;
try {
  ctx = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, viewport: { width: 1600, height: 1000 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
  });
  await ctx.route('**/*', route => {  // local only, as the rig's runner does
    const url = route.request().url();
    let host = '';
    try { host = new URL(url).hostname; } catch { /* data:, blob: */ }
    return url.startsWith('data:') || url.startsWith('blob:') || host === '127.0.0.1' || host === 'localhost'
      ? route.continue() : route.abort('blockedbyclient');
  });
  const page = ctx.pages()[0] ?? await ctx.newPage();
  page.on('pageerror', e => result.pageErrors.push(e.message));
  page.on('response', r => { if (r.url().includes('/workflow_templates/')) result.requests.push([r.status(), decodeURIComponent(new URL(r.url()).pathname)]); });
  await page.goto(base + '/', { waitUntil: 'load', timeout: 120000 });
  await page.waitForFunction(() => window.app?.graph && window.app.canvas && window.app.extensionManager?.command, null, { timeout: 120000 });
  await page.waitForTimeout(1000);
  for (let i = 0; i < 3 && await page.locator('.p-dialog').count(); i++) { await page.keyboard.press('Escape'); await page.waitForTimeout(300); }
  await page.evaluate(() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates'));  // the Templates button
  const dialog = page.locator('.p-dialog').first();
  await dialog.waitFor({ timeout: 30000 });
  await dialog.getByText(moduleName, { exact: true }).first().click();  // the pack's folder under "Custom Nodes"
  await page.waitForTimeout(1500);
  // The titles shown: each name the server lists that appears as a card's exact text.
  const listed = await (await fetch(`${base}/api/workflow_templates`)).json();
  const names = listed[moduleName] ?? [];
  for (const name of names) {
    if (await dialog.getByText(name, { exact: true }).count()) result.titles.push(name);
  }
  await page.screenshot({ path: shotPath });
  const before = await page.evaluate(() => window.app.graph.nodes.length);
  await dialog.getByText(openTitle, { exact: true }).first().click();
  await page.waitForFunction(() => !document.querySelector('.p-dialog'), null, { timeout: 30000 }).catch(() => {});
  await page.waitForTimeout(1500);
  result.opened = await page.evaluate(before => ({
    before, nodes: window.app.graph.nodes.length, types: [...new Set(window.app.graph.nodes.map(n => n.type))].sort(),
    dialogOpen: !!document.querySelector('.p-dialog'),
  }), before);
} catch (e) {
  console.error(`ERROR: ${e.message}`);
  code = 4;
} finally {
  await ctx?.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
console.log('RESULT ' + JSON.stringify(result));
process.exit(code);
