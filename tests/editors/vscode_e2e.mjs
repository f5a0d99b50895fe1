// Drives code-server in headless Chromium: open a file, type, wait for fim-lsp's ghost text,
// press Tab, save. Config comes as JSON in FIM_TEST_CONFIG; the result goes to config.result.
// Run by tests/editors/test_vscode.py; playwright-core comes from editors/vscode/node_modules.

import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { createRequire } from "node:module";

const config = JSON.parse(readFileSync(process.env.FIM_TEST_CONFIG, "utf8"));
const require = createRequire(config.extensionPackageJson);
const { chromium } = require("playwright-core");

const result = { steps: [] };
const step = (name) => {
  result.steps.push(`${new Date().toISOString()} ${name}`);
  console.log(name);
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Whether the extension's output channel (written under code-server's logs) holds `text`.
function serverLogged(logsDir, text) {
  if (!existsSync(logsDir)) return false;
  return readdirSync(logsDir, { recursive: true })
    .filter((name) => name.endsWith("FIM LSP.log"))
    .some((name) => readFileSync(join(logsDir, name), "utf8").includes(text));
}

async function statusLabel(page) {
  const item = page.locator(".statusbar-item", { hasText: "FIM" }).first();
  if ((await item.count()) === 0) return null;
  const label = await item.locator("a").first().getAttribute("aria-label").catch(() => null);
  return label ?? (await item.getAttribute("aria-label").catch(() => null));
}

async function ghostText(page) {
  return page.evaluate(() => {
    const editor = document.querySelector(".editor-instance .monaco-editor.focused, .monaco-editor");
    if (!editor) return null;
    const inline = [...editor.querySelectorAll(".ghost-text-decoration")];
    const below = [...editor.querySelectorAll(".ghost-text .view-line, .ghost-text-decoration-preview")];
    if (inline.length === 0 && below.length === 0) return null;
    const clean = (el) => el.textContent.replace(/\u00a0/g, " ");
    return { inline: inline.map(clean).join(""), lines: below.map(clean) };
  });
}

async function main() {
  const context = await chromium.launchPersistentContext(config.profile, {
    executablePath: config.chromium,
    headless: true,
    viewport: { width: 1400, height: 900 },
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(60_000);
  try {
    step(`open ${config.url}`);
    await page.goto(config.url, { waitUntil: "domcontentloaded" });
    await page.waitForSelector(".monaco-workbench", { timeout: 120_000 });
    step("workbench loaded");

    // Open the file through Quick Open.
    await page.waitForSelector(".part.statusbar", { timeout: 120_000 });
    await sleep(1500);
    await page.keyboard.press("Control+P");
    await page.waitForSelector(".quick-input-widget input", { state: "visible" });
    await page.keyboard.type(config.fileName, { delay: 20 });
    await page.waitForSelector(".quick-input-list .monaco-list-row", { state: "visible" });
    await sleep(500);
    await page.keyboard.press("Enter");
    await page.waitForSelector(".editor-instance .monaco-editor .view-lines", { state: "visible" });
    step("file open");

    // The server answers nothing until its model is loaded: wait for the status bar to say ready.
    const readyBy = Date.now() + config.readyTimeoutMs;
    let label = null;
    while (Date.now() < readyBy) {
      label = await statusLabel(page);
      if (label && /fim-lsp: ready/.test(label)) break;
      if (label && /error/.test(label)) throw new Error(`status bar: ${label}`);
      await sleep(500);
    }
    result.statusReady = label;
    step(`status: ${label}`);
    if (!label || !/fim-lsp: ready/.test(label)) throw new Error(`the server did not get ready: ${label}`);
    await page.screenshot({ path: `${config.artifacts}/vscode-ready.png` });

    // Go to the end of the line and type; the ghost text should appear at the cursor.
    await page.click(".editor-instance .monaco-editor .view-lines");
    await page.keyboard.press("Control+G");
    await page.waitForSelector(".quick-input-widget input", { state: "visible" });
    await page.keyboard.type(String(config.line), { delay: 20 });
    await page.keyboard.press("Enter");
    await page.keyboard.press("End");
    let ghost = null;
    for (let attempt = 1; attempt <= 3 && !ghost; attempt++) {
      if (attempt > 1) {
        await page.keyboard.press("Backspace");
      }
      await page.keyboard.type(config.typed, { delay: 50 });
      step(`typed ${JSON.stringify(config.typed)} (attempt ${attempt})`);
      const by = Date.now() + 30_000;
      while (Date.now() < by && !(ghost = await ghostText(page))) await sleep(250);
      result.attempts = attempt;
    }
    if (!ghost) throw new Error("no ghost text appeared");
    await sleep(500); // let it render fully
    ghost = await ghostText(page);
    result.ghost = ghost;
    result.statusWhileShown = await statusLabel(page);
    step(`ghost text: ${JSON.stringify(ghost)}`);
    await page.screenshot({ path: `${config.artifacts}/vscode-ghost-text.png` });

    await page.keyboard.press("Tab");
    await sleep(500);
    step("pressed Tab");
    result.ghostAfterTab = await ghostText(page);
    await page.keyboard.press("Escape"); // VS Code asks again right after an accept
    await page.keyboard.press("Control+S");
    await sleep(1500);
    await page.screenshot({ path: `${config.artifacts}/vscode-accepted.png` });
    step("saved");

    // A setting changed while the server runs reaches it (workspace/didChangeConfiguration):
    // the next suggestion is generated under the new maxNewTokens.
    mkdirSync(dirname(config.settingsFile), { recursive: true });
    writeFileSync(config.settingsFile, JSON.stringify(config.changedSettings, null, 2));
    // Wait until the server logs the change: code-server's file watcher is slow on a busy machine.
    const changedBy = Date.now() + 60_000;
    while (Date.now() < changedBy && !serverLogged(config.logsDir, "workspace/didChangeConfiguration:"))
      await sleep(250);
    if (!serverLogged(config.logsDir, "workspace/didChangeConfiguration:"))
      throw new Error("the settings change did not reach the server within 60 s");
    step("settings change logged by the server");
    await page.keyboard.press("Control+G");
    await page.waitForSelector(".quick-input-widget input", { state: "visible" });
    await page.keyboard.type(String(config.secondLine), { delay: 20 });
    await page.keyboard.press("Enter");
    await page.keyboard.press("End");
    let second = null;
    for (let attempt = 1; attempt <= 3 && !second; attempt++) {
      if (attempt > 1) await page.keyboard.press("Backspace");
      await page.keyboard.type(config.typed, { delay: 50 });
      const by = Date.now() + 30_000;
      while (Date.now() < by && !(second = await ghostText(page))) await sleep(250);
    }
    result.secondGhost = second;
    step(`ghost text after the settings change: ${JSON.stringify(second)}`);
    await page.screenshot({ path: `${config.artifacts}/vscode-after-settings-change.png` });
    await page.keyboard.press("Escape");

    // The toggle command turns suggestions off, and the status bar says so.
    await page.keyboard.press("Control+Shift+P");
    await page.waitForSelector(".quick-input-widget input", { state: "visible" });
    await page.keyboard.type("FIM LSP: Toggle Suggestions", { delay: 10 });
    await page.waitForSelector(".quick-input-list .monaco-list-row", { state: "visible" });
    await sleep(500);
    result.palette = await page.locator(".quick-input-list .monaco-list-row").allInnerTexts();
    await page.screenshot({ path: `${config.artifacts}/vscode-command-palette.png` });
    await page.keyboard.press("Enter");
    const offBy = Date.now() + 15_000;
    while (Date.now() < offBy) {
      result.statusAfterToggle = await statusLabel(page);
      if (/suggestions are off/.test(result.statusAfterToggle ?? "")) break;
      await sleep(250);
    }
    step(`after toggle: ${result.statusAfterToggle}`);
    await page.keyboard.press("Control+Shift+P");
    await page.waitForSelector(".quick-input-widget input", { state: "visible" });
    await page.keyboard.type("Notifications: Show Notifications", { delay: 10 });
    await sleep(500);
    await page.keyboard.press("Enter");
    await sleep(1000);
    result.notifications = await page.locator(".notifications-center .notification-list-item").allInnerTexts();
    await page.screenshot({ path: `${config.artifacts}/vscode-toggled-off.png` });
  } catch (error) {
    result.error = String(error && error.stack ? error.stack : error);
    await page.screenshot({ path: `${config.artifacts}/vscode-failure.png` }).catch(() => {});
  } finally {
    writeFileSync(config.result, JSON.stringify(result, null, 2));
    await context.close();
  }
}

main().catch((error) => {
  result.error = String(error);
  writeFileSync(config.result, JSON.stringify(result, null, 2));
  process.exit(1);
});
