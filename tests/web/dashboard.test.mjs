// Browser test of the dashboard: a real demo network (`crabnet demo --serve`) on 127.0.0.1,
// Debian's Chromium in headless mode driven by playwright-core. It loads the dashboard, sees the
// seeds table filled and the task sandbox shown, publishes a seed with the CLI, sees the event
// arrive live (over EventSource) and the table update, and saves a screenshot.
//
// Environment: CRABNET_BIN (the crabnet binary), CHROMIUM (default /usr/bin/chromium),
// CRABNET_WEB_ARTIFACTS (directory for the screenshot).

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import readline from "node:readline";
import { chromium } from "playwright-core";

const BIN = process.env.CRABNET_BIN;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = process.env.CRABNET_WEB_ARTIFACTS || path.join(tmpdir(), "crabnet-web-test");
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-quic",
];

/** Starts `crabnet demo --serve` and waits for its dashboard address and alice's data dir. */
async function startDemo() {
  const child = spawn(BIN, ["demo", "--serve", "--http", "127.0.0.1:0"], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, CRABNET_LOG: "warn" },
  });
  const lines = [];
  const rl = readline.createInterface({ input: child.stdout });
  const found = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`demo did not start:\n${lines.join("\n")}`)), 120_000);
    let url = null;
    rl.on("line", (line) => {
      lines.push(line);
      const u = line.match(/^dashboard (http:\/\/127\.0\.0\.1:\d+\/)/);
      if (u) url = u[1];
      const d = line.match(/--data-dir (\S+) seed publish/);
      if (url && d) {
        clearTimeout(timer);
        resolve({ url, dataDir: d[1] });
      }
    });
    child.on("exit", (code) => reject(new Error(`demo exited with ${code}:\n${lines.join("\n")}`)));
  });
  return { child, lines, ...found };
}

function stopDemo(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve(child.exitCode);
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      resolve(code ?? signal);
    });
    child.kill("SIGINT");
  });
}

test("the dashboard shows the demo network and live events", { timeout: 240_000 }, async () => {
  assert.ok(BIN, "CRABNET_BIN must name the crabnet binary");
  mkdirSync(ARTIFACTS, { recursive: true });
  const demo = await startDemo();
  const profile = mkdtempSync(path.join(tmpdir(), "crabnet-chromium-"));
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: FLAGS,
      viewport: { width: 1400, height: 1000 },
    });
    const page = context.pages()[0] || (await context.newPage());
    const problems = [];
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("console", (m) => {
      if (m.type() === "error") problems.push(`console error: ${m.text()}`);
    });
    page.on("requestfailed", (r) => {
      // The event stream is cut when the page closes; anything else is a failure.
      if (!r.url().includes("/api/events/stream")) problems.push(`request failed: ${r.url()}`);
    });

    await page.goto(demo.url);
    await page.waitForSelector("body[data-state=ready]", { timeout: 30_000 });

    // Identity, health and the live connection.
    assert.equal(await page.textContent("#node-name"), "alice");
    await page.waitForSelector("#health.ok", { timeout: 15_000 });
    await page.waitForSelector("body[data-live=connected]", { timeout: 15_000 });

    // The seeds table holds the demo's settled seed.
    const settled = await page.$$("#seeds tbody tr[data-status=settled]");
    assert.equal(settled.length, 1, "one settled seed from the demo lifecycle");
    assert.match(await page.textContent("#status-counts"), /settled\s*1/);

    // Topology: alice and her two peers, drawn as an SVG graph; rejection counters.
    await page.waitForFunction(() => document.querySelectorAll("#topology g.node").length === 3);
    const names = await page.$$eval("#topology g.node text:not(.fp)", (ts) => ts.map((t) => t.textContent).sort());
    assert.deepEqual(names, ["alice", "bob", "carol"]);
    assert.equal(await page.$$eval("#topology line", (ls) => ls.length), 2);
    // One row per rejection reason the API reports (13 today).
    const overview = await page.evaluate(() => fetch("/api/overview").then((r) => r.json()));
    const reasons = Object.keys(overview.rejections).length;
    assert.equal(reasons, 13);
    assert.equal(await page.$$eval("#rejections li[data-key]", (ls) => ls.length), reasons);
    // The task sandbox card shows what /api/overview says: this machine (like CI) builds the
    // full sandbox. The demo's result shows the sandbox it ran in, in the table and in detail.
    const sandbox = overview.sandbox;
    assert.equal(sandbox.level, "full", `the full task sandbox is available: ${JSON.stringify(sandbox)}`);
    assert.equal(await page.getAttribute("body", "data-sandbox-level"), "full");
    assert.equal(await page.textContent("#sandbox dd[data-key=level]"), "full");
    assert.equal(await page.textContent("#sandbox dd[data-key=policy]"), sandbox.policy.replaceAll("_", " "));
    assert.equal(await page.textContent("#sandbox dd[data-key=can_run]"), "yes");
    assert.match(await page.textContent("#sandbox dd[data-key=features]"), /landlock_fs/);
    assert.equal(await page.$("#sandbox dd[data-key=missing]"), null, "nothing is missing");
    assert.equal(await page.textContent("#seeds tbody tr[data-status=settled] td.sandbox"), "full");
    await page.click("#seeds tbody tr[data-status=settled]");
    await page.waitForSelector("#seed-detail:not([hidden])");
    assert.match(await page.textContent("#seed-detail"), /sandbox\s*full [a-z_, ]*landlock_fs/);

    const before = await page.$$eval("#events li", (ls) => ls.length);
    assert.ok(before > 10, `the feed shows the demo's events (${before})`);

    // A new seed, published by another process on alice's data directory, arrives live.
    const id = execFileSync(BIN, ["--data-dir", demo.dataDir, "seed", "publish", "--command", "echo from the browser test", "--max-bids", "2", "--network"], {
      encoding: "utf8",
    }).trim();
    assert.match(id, /^[0-9a-f]{32}$/);
    const liveSelector = `#events li[data-source=live][data-type=seed_published][data-seed-id="${id}"]`;
    await page.waitForSelector(liveSelector, { timeout: 20_000 });
    assert.match(await page.textContent(liveSelector), /echo from the browser test/);
    assert.ok(Number(await page.getAttribute("body", "data-live-events")) >= 1);
    // ... and the table follows without a reload.
    const row = `#seeds tbody tr[data-seed-id="${id}"]`;
    await page.waitForSelector(`${row}[data-status=open]`, { timeout: 20_000 });
    assert.match(await page.textContent(`${row} td.command`), /🌐/, "the seed needs the network");
    assert.equal(await page.textContent(`${row} td.sandbox`), "–", "no result yet");
    await page.click(row);
    await page.waitForSelector("#seed-detail:not([hidden])");
    await page.waitForFunction(() => /echo from the browser test/.test(document.querySelector("#seed-detail").textContent));
    assert.match(await page.textContent("#seed-detail"), /needs\s*network access/);

    const shot = path.join(ARTIFACTS, "dashboard.png");
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`screenshot: ${shot}`);
    assert.deepEqual(problems, [], "no errors in the page");
  } finally {
    if (context) await context.close();
    rmSync(profile, { recursive: true, force: true });
    const code = await stopDemo(demo.child);
    assert.equal(code, 0, `demo exits cleanly on Ctrl-C:\n${demo.lines.join("\n")}`);
  }
});
