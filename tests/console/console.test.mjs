// The web console in a real browser: Debian's chromium, headless, driven
// by playwright-core, against a real `fineport serve --demo` on loopback
// with its own data directory and port. Run by scripts/console-test (from
// scripts/test):
//
//   node --test tests/console/console.test.mjs
//
// Environment: FINEPORT_BIN (default $CARGO_TARGET_DIR/release/fineport),
// CARGO_TARGET_DIR (default /var/tmp/fineport-target; screenshots go to
// <target dir>/console-screenshots/), CHROMIUM (default /usr/bin/chromium).
//
// The walk: sign in (a wrong token first), create a service, add a
// property, reissue a token with a reason, build an export, preview and
// download it (its CSV header and row count against the Export API's
// answer to the same body), read the request log with its charts, sign
// out; then a keyboard-only sign-in and a pass at phone width (390 px).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { chromium } from "playwright-core";

const targetDir = process.env.CARGO_TARGET_DIR || "/var/tmp/fineport-target";
const bin = process.env.FINEPORT_BIN || join(targetDir, "release", "fineport");
const shots = join(targetDir, "console-screenshots");
const adminToken = `console-test-${randomBytes(12).toString("hex")}`;
const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

let work, server, base, serverLog = "", browser, exportToken;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitForHealth() {
  for (let i = 0; i < 600; i++) {
    if (server.exitCode !== null) throw new Error(`fineport serve exited:\n${serverLog}`);
    try {
      const r = await fetch(`${base}/health`);
      if (r.ok) return;
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`fineport serve did not answer /health:\n${serverLog}`);
}

before(async () => {
  work = mkdtempSync(join(tmpdir(), "fineport-console-"));
  mkdirSync(shots, { recursive: true });
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  server = spawn(bin, ["serve", "--demo", "--listen", `127.0.0.1:${port}`, "--data", join(work, "data")], {
    env: { ...process.env, FINEPORT_ADMIN_TOKEN: adminToken, RUST_LOG: "warn" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  server.stdout.on("data", (d) => { serverLog += d; });
  server.stderr.on("data", (d) => { serverLog += d; });
  await waitForHealth();
  exportToken = /export token \(Authorization: Bearer\): *(\S+)/.exec(serverLog)?.[1];
  assert.ok(exportToken, `the demo's export token was not printed:\n${serverLog}`);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    // launch() gives the browser a fresh user-data directory of its own
    // (a new temporary profile, removed on close).
    args: CHROMIUM_ARGS,
  });
});

after(async () => {
  if (browser) await browser.close();
  if (server && server.exitCode === null) {
    server.kill("SIGTERM");
    await new Promise((r) => server.once("exit", r));
  }
  assert.ok(!/panicked/.test(serverLog), `the server panicked:\n${serverLog}`);
  rmSync(work, { recursive: true, force: true });
});

async function newPage(viewport) {
  const context = await browser.newContext({ viewport, acceptDownloads: true, baseURL: base });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error" && !/status of (401|404)/.test(m.text())) errors.push(m.text()); });
  return { context, page, errors };
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

async function signIn(page) {
  await page.goto("/console");
  await page.getByLabel("Admin token").fill(adminToken);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("navigation", { name: "Pages" }).waitFor();
}

/** The Export API's own answer to `body` for the demo service. */
async function exportApi(body) {
  const r = await fetch(`${base}/api/v1/export/event?service_id=demo`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${exportToken}` },
    body: JSON.stringify(body),
  });
  assert.equal(r.status, 200, await r.clone().text());
  return r.text();
}

/** Data lines of a CSV body (quoted line breaks kept in their row). */
function csvRows(text) {
  let rows = 0, quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') quoted = !quoted;
    else if (c === "\n" && !quoted) rows++;
  }
  if (text.length && !text.endsWith("\n")) rows++;
  return rows - 1;
}

test("the console, as an operator uses it", async (t) => {
  const { context, page, errors } = await newPage({ width: 1280, height: 900 });

  await t.test("sign in, a wrong token first", async () => {
    await page.goto("/console");
    const token = page.getByLabel("Admin token");
    await token.fill("not-the-token");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").filter({ hasText: "not the admin token" }).waitFor();
    await shot(page, "01-sign-in");
    await token.fill(adminToken);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: "Services" }).waitFor();
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === "fineport_console");
    assert.ok(session, JSON.stringify(cookies));
    assert.equal(session.httpOnly, true);
    assert.equal(session.sameSite, "Strict");
    assert.ok(session.expires > Date.now() / 1000, "the cookie expires");
    assert.ok(!session.value.includes(adminToken));
    assert.equal(await page.evaluate(() => document.cookie), "", "the page's script cannot read the cookie");
  });

  await t.test("create a service with a timezone from the searchable list", async () => {
    await page.getByLabel("Service id").fill("shop");
    await page.getByLabel("Name", { exact: true }).fill("The shop");
    const tz = page.getByLabel("Timezone");
    const options = await page.locator(`datalist#${await tz.getAttribute("list")} option`).count();
    assert.ok(options > 300, `${options} timezones offered`);
    await tz.fill("Europe/Paris");
    await page.getByLabel("Look-back days").fill("60");
    await page.getByLabel("Exports per hour").fill("50");
    await page.getByRole("button", { name: "Create service" }).click();
    await page.getByRole("group", { name: "Import token (access_token)" }).waitFor();
    const exportSecret = await page.getByRole("group", { name: "Export token (Authorization: Bearer)" }).getByRole("textbox").inputValue();
    assert.match(exportSecret, /^[0-9a-f]{64}$/);
    await page.getByRole("cell", { name: "shop", exact: true }).waitFor();
    await shot(page, "02-services");
    await page.getByRole("link", { name: "shop", exact: true }).click();
    await page.getByRole("heading", { name: "Service shop" }).waitFor();
    assert.equal(await page.getByLabel("Timezone").inputValue(), "Europe/Paris");
    assert.equal(await page.getByLabel("Exports per hour").inputValue(), "50");
    await page.getByLabel("Exports at once").fill("3");
    await page.getByRole("button", { name: "Save settings" }).click();
    await page.getByRole("status").filter({ hasText: "Settings saved." }).waitFor();
    await shot(page, "03-settings");
  });

  await t.test("add an event and a property, and find them by search", async () => {
    await page.getByRole("link", { name: "Taxonomy" }).click();
    await page.getByRole("heading", { name: "Taxonomy of shop" }).waitFor();
    await page.getByLabel("Kind").selectOption({ label: "Event" });
    assert.equal(await page.getByLabel("Type").isDisabled(), true, "events have no type");
    await page.getByLabel("Name", { exact: true }).fill("purchase");
    await page.getByRole("button", { name: "Add", exact: true }).click();
    await page.getByRole("status").filter({ hasText: "purchase added." }).waitFor();
    await page.getByLabel("Kind").selectOption({ label: "Event property" });
    await page.getByLabel("Name", { exact: true }).fill("price");
    await page.getByLabel("Type").selectOption("Double");
    await page.getByRole("button", { name: "Add", exact: true }).click();
    await page.getByRole("status").filter({ hasText: "price added." }).waitFor();
    // The same name with another type is refused before it is sent.
    await page.getByLabel("Kind").selectOption({ label: "Event property" });
    await page.getByLabel("Name", { exact: true }).fill("price");
    await page.getByLabel("Type").selectOption("Long");
    await page.getByRole("button", { name: "Add", exact: true }).click();
    await page.getByRole("alert").filter({ hasText: "already" }).waitFor();
    await page.getByLabel("Search names").fill("property price");
    const rows = page.locator("tbody tr");
    assert.equal(await rows.count(), 1);
    assert.deepEqual(await rows.first().locator("td").allTextContents(), ["Event property", "price", "Double"]);
    await page.getByLabel("Search names").fill("");
    await shot(page, "04-taxonomy");
  });

  await t.test("reissue a token with a reason, then see it listed", async () => {
    await page.getByRole("link", { name: "Tokens" }).click();
    await page.getByRole("heading", { name: "Tokens of shop" }).waitFor();
    const card = page.locator("form", { has: page.getByRole("heading", { name: "Export token" }) });
    await card.getByLabel("Reason for reissuing").fill("rotated by the browser test");
    await card.getByRole("button", { name: "Reissue export token" }).click();
    const secret = page.getByRole("group", { name: "New export token" });
    await secret.waitFor();
    assert.match(await secret.getByRole("textbox").inputValue(), /^[0-9a-f]{64}$/);
    await page.getByText(/keeps working until .*14-day grace/).waitFor();
    await page.getByRole("cell", { name: "rotated by the browser test" }).waitFor();
    assert.ok(await page.getByRole("cell", { name: "grace" }).count() >= 1, "the previous token is in its grace period");
    // Revoking asks first; cancelling keeps the token.
    await page.getByRole("button", { name: "Revoke import token…" }).click();
    await page.getByRole("button", { name: "Yes, revoke the import token" }).waitFor();
    await shot(page, "05-tokens");
    await page.getByRole("button", { name: "Cancel" }).first().click();
    assert.equal(await page.getByRole("button", { name: "Yes, revoke the import token" }).isVisible(), false);
  });

  await t.test("build an export, preview it and download it", async () => {
    await page.goto("/console#/services/demo/export");
    await page.getByRole("heading", { name: "Export from demo" }).waitFor();
    const events = page.getByRole("group", { name: "Events", exact: true });
    await events.getByLabel("Only those checked").check();
    await page.getByRole("group", { name: "Event names" }).getByLabel("df_purchase", { exact: true }).check();
    await page.getByRole("group", { name: "Event names" }).getByLabel("df_refund", { exact: true }).check();
    await page.getByRole("group", { name: "Property columns" }).getByLabel("All but those checked").check();
    await page.getByRole("group", { name: "Properties", exact: true }).getByLabel("df_items", { exact: true }).check();
    const from = page.getByLabel("From", { exact: true });
    const min = await from.getAttribute("min");
    assert.match(min, /^\d{4}-\d{2}-\d{2}$/, "the look-back bounds the dates");
    const to = await page.getByLabel("To", { exact: true }).inputValue();
    const cli = await page.locator("#cli-command").textContent();
    assert.match(cli, /fineport export --base-url http:\/\/127\.0\.0\.1:\d+ --service demo --from \S+ --to \S+ --events df_purchase,df_refund --exclude-properties df_items/);
    const curl = await page.locator("#curl-command").textContent();
    assert.ok(curl.includes("/api/v1/export/event?service_id=demo"), curl);
    assert.ok(curl.includes("<export token>"), curl);
    const body = {
      events_condition_type: "include", events: ["df_purchase", "df_refund"],
      properties_condition_type: "exclude", properties: ["df_items"],
      from_date: await from.inputValue(), to_date: to,
    };
    assert.ok(curl.includes(JSON.stringify(body)), `${curl}\n${JSON.stringify(body)}`);

    await page.getByRole("button", { name: "Preview 20 rows" }).click();
    await page.getByRole("heading", { name: "Preview" }).waitFor();
    const expected = await exportApi(body);
    const header = expected.slice(0, expected.indexOf("\n"));
    const previewHeader = await page.getByRole("table", { name: "The first rows of the export" }).locator("th").allTextContents();
    assert.equal(previewHeader.join(","), header);
    const previewRows = await page.getByRole("table", { name: "The first rows of the export" }).locator("tbody tr").count();
    assert.equal(previewRows, Math.min(20, csvRows(expected)));
    await shot(page, "06-export");

    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.getByRole("button", { name: "Download CSV" }).click(),
    ]);
    assert.equal(download.suggestedFilename(), `demo_events_${body.from_date}_${body.to_date}.csv`);
    const file = join(work, "download.csv");
    await download.saveAs(file);
    const csv = readFileSync(file, "utf8");
    assert.equal(csv.slice(0, csv.indexOf("\n")), header, "the CSV header");
    assert.ok(header.split(",").includes("df_event_log_id"), header);
    assert.ok(!header.includes("df_items"), header);
    assert.ok(csvRows(expected) > 20, "the demo has more than a preview's rows");
    assert.equal(csvRows(csv), csvRows(expected), "the row count");
  });

  await t.test("read the request log, with its charts, filtered by outcome", async () => {
    await page.getByRole("link", { name: "Request log" }).click();
    await page.getByRole("heading", { name: "Request log of demo" }).waitFor();
    const charts = page.locator("svg[role=img]");
    assert.equal(await charts.count(), 3);
    assert.ok(await charts.first().locator("rect").count() >= 48, "a bar for every hour");
    const label = await charts.nth(1).getAttribute("aria-label");
    assert.match(label, /Exported rows per hour/);
    assert.ok(!/: 0 rows in all/.test(label), `the exports above count: ${label}`);
    const log = page.getByRole("table", { name: "The request log" });
    const endpoints = await log.locator("tbody tr td:nth-child(4)").allTextContents();
    assert.ok(endpoints.includes("/api/v1/export/event"), endpoints.join(" "));
    await shot(page, "07-requests");
    await page.getByLabel("Outcome").fill("ok");
    await page.getByRole("button", { name: "Filter" }).click();
    await page.getByText(/with outcome ok/).waitFor();
    const messages = await page.getByRole("table", { name: "The request log" }).locator("tbody tr td:nth-child(3)").allTextContents();
    assert.ok(messages.length > 0);
    assert.deepEqual([...new Set(messages)], ["ok"]);
  });

  await t.test("audiences with their sizes", async () => {
    await page.getByRole("link", { name: "Audiences" }).click();
    await page.getByRole("heading", { name: "Audiences of demo" }).waitFor();
    await page.getByLabel("Name", { exact: true }).fill("Two users");
    await page.getByLabel("External ids", { exact: true }).fill("nosuch-1\nnosuch-2");
    await page.getByRole("button", { name: "Create audience" }).click();
    await page.getByRole("cell", { name: "Two users" }).waitFor();
    assert.equal(await page.getByText("does not report audience sizes").count(), 0);
    // No empty part of the page shows up as the text "null".
    assert.ok(!/\bnull\b/.test(await page.locator("main").innerText()), "a stray null on the page");
    await shot(page, "08-audiences");
  });

  await t.test("sign out ends the session", async () => {
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByRole("heading", { name: "Sign in" }).waitFor();
    const status = await page.evaluate(async () => (await fetch("/admin/v1/services")).status);
    assert.equal(status, 401);
    assert.equal((await context.cookies()).filter((c) => c.name === "fineport_console").length, 0);
  });

  assert.deepEqual(errors, [], "no script errors");
  await context.close();
});

test("keyboard only: sign in and move between pages", async () => {
  const { context, page, errors } = await newPage({ width: 1280, height: 900 });
  await page.goto("/console");
  await page.getByLabel("Admin token").waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.id), await page.getByLabel("Admin token").getAttribute("id"),
    "the token field has the focus");
  await page.keyboard.type(adminToken);
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Services" }).waitFor();
  // After each page change the focus is on the page itself: Tab reaches
  // its first control, Shift+Tab walks back up into the navigation.
  const focused = () => page.evaluate(() => document.activeElement.textContent.trim());
  await page.keyboard.press("Tab");
  assert.equal(await focused(), "demo", "Tab from the page goes to its first link");
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.notEqual(outline, "none", "focus is visible");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Service demo" }).waitFor();
  let reached = false;
  for (let i = 0; i < 12 && !reached; i++) {
    await page.keyboard.press("Shift+Tab");
    reached = (await focused()) === "Taxonomy";
  }
  assert.ok(reached, "the navigation is reachable by Shift+Tab");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Taxonomy of demo" }).waitFor();
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.name), "scope", "the add form's first field comes first");
  await page.keyboard.press("Tab");
  await page.keyboard.type("reviewed");
  await page.keyboard.press("Enter");
  await page.getByRole("status").filter({ hasText: "reviewed added." }).waitFor();
  for (let i = 0; i < 15 && (await focused()) !== "Skip to the page"; i++) {
    await page.keyboard.press("Shift+Tab");
  }
  assert.equal(await focused(), "Skip to the page");
  await shot(page, "09-keyboard");
  assert.deepEqual(errors, []);
  await context.close();
});

test("a phone's width (390 px): every page fits", async () => {
  const { context, page, errors } = await newPage({ width: 390, height: 844 });
  await signIn(page);
  for (const [hash, heading, name] of [
    ["#/services", "Services", "services"],
    ["#/services/demo", "Service demo", "settings"],
    ["#/services/demo/tokens", "Tokens of demo", "tokens"],
    ["#/services/demo/taxonomy", "Taxonomy of demo", "taxonomy"],
    ["#/services/demo/audiences", "Audiences of demo", "audiences"],
    ["#/services/demo/export", "Export from demo", "export"],
    ["#/services/demo/requests", "Request log of demo", "requests"],
  ]) {
    await page.goto(`/console${hash}`);
    await page.getByRole("heading", { name: heading, exact: true }).waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `${name}: the page is ${overflow}px wider than the screen`);
    await shot(page, `phone-${name}`);
  }
  assert.deepEqual(errors, []);
  await context.close();
});
