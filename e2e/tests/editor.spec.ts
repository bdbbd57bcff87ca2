// ComfyUI's real editor (PyPI `comfyui-frontend-package` 1.27.10, the version ComfyUI 0.3.64 pins; installed by
// scripts/e2e.sh, its static folder in COMFY_FRONTEND_ROOT) served by a fake ComfyUI of this spec's own
// (`--front-end-root`), opened twice: directly at the fake, then at Orchestrator's editor origin (ORCH_COMFY_BIND),
// which relays every path to ComfyUI. In each the editor must come up for real (the graph canvas with the default
// graph's nodes, the node library, the Run button) and every request that fails (no answer, or a status >= 400)
// is recorded by method and path: the editor origin may fail only where the direct connection fails too, and its
// WebSocket must connect through the editor origin. On the panel's origin ComfyUI's pages are refused
// (403 `editor_origin_only`, naming the editor's address).
//
// Both visits are a returning user's (the settings a first start writes are there before the first), so they make
// the same requests: a first start opens the templates dialog on an empty graph, and the second visit would not.
// What ComfyUI itself fails on (no user.css, no saved workflows, no workflow templates package, the release check
// on api.comfy.org, which this spec keeps off the network) is taken from the direct visit and allowed for both
// pages, so the browser-problems check still fails on anything new.

import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Page, WebSocket } from '@playwright/test';
import { test, expect, type BrowserProblems } from '../harness/fixtures';
import { OwnFakeComfy, OwnOrchestrator, REPO_ROOT } from '../harness/servers';

/** One failed request: method and path (with the origin when it is not the page's own), and what happened. */
interface Failure {
  key: string;
  what: string;
  url: string;
  method: string;
  status?: number;
  error?: string;
}

interface Visit {
  failures: Failure[];
  /** Uncaught exceptions and console errors as the browser-problems check words them, the page's origin
   * written as `<origin>`. */
  errors: string[];
  sockets: WebSocket[];
  /** The text frames each socket received, by socket. */
  frames: Map<WebSocket, string[]>;
  /** Every origin the page sent a request to. */
  origins: Set<string>;
}

const NOT_LOCAL = (url: URL) => url.hostname !== '127.0.0.1';
/** The frontend ComfyUI 0.3.64 pins (`required_frontend_version`), which scripts/e2e.sh installs. */
const FRONTEND_VERSION = '1.27.10';

/** COMFY_FRONTEND_ROOT, else the package's static folder in the repository's .venv-frontend. */
function frontendRoot(): string {
  if (process.env.COMFY_FRONTEND_ROOT) return process.env.COMFY_FRONTEND_ROOT;
  const lib = path.join(REPO_ROOT, '.venv-frontend', 'lib');
  for (const python of fs.existsSync(lib) ? fs.readdirSync(lib) : []) {
    const root = path.join(lib, python, 'site-packages', 'comfyui_frontend_package', 'static');
    if (fs.existsSync(path.join(root, 'index.html'))) return root;
  }
  throw new Error(
    'COMFY_FRONTEND_ROOT is not set and .venv-frontend has no comfyui-frontend-package: run this spec with ' +
      'scripts/e2e.sh, which installs it and sets COMFY_FRONTEND_ROOT to its static folder',
  );
}

/** Records what fails on `page` (requests of this page only; the origin is the page's own). */
function record(page: Page, origin: string): Visit {
  const visit: Visit = { failures: [], errors: [], sockets: [], frames: new Map(), origins: new Set() };
  page.on('request', (request) => {
    const url = new URL(request.url());
    if (url.protocol === 'http:' || url.protocol === 'https:') visit.origins.add(url.origin);
  });
  const keyOf = (raw: string, method: string) => {
    const url = new URL(raw);
    return `${method} ${url.origin === origin ? '' : url.origin}${url.pathname}`;
  };
  const local = (text: string) => text.split(origin).join('<origin>');
  page.on('requestfailed', (request) => {
    const error = request.failure()?.errorText ?? 'failed';
    visit.failures.push({
      key: keyOf(request.url(), request.method()),
      what: error,
      url: request.url(),
      method: request.method(),
      error,
    });
  });
  page.on('response', (response) => {
    if (response.status() < 400) return;
    const request = response.request();
    visit.failures.push({
      key: keyOf(response.url(), request.method()),
      what: `HTTP ${response.status()}`,
      url: response.url(),
      method: request.method(),
      status: response.status(),
    });
  });
  page.on('pageerror', (error) => {
    const first = (error.stack ?? error.message).split('\n')[0];
    visit.errors.push(local(`uncaught exception: ${first}`));
  });
  page.on('console', (message) => {
    if (message.type() === 'error') visit.errors.push(local(`console error: ${message.text()}`));
  });
  page.on('websocket', (socket) => {
    const frames: string[] = [];
    visit.sockets.push(socket);
    visit.frames.set(socket, frames);
    socket.on('framereceived', (frame) => {
      if (typeof frame.payload === 'string') frames.push(frame.payload);
    });
  });
  return visit;
}

/** Opens ComfyUI's frontend at `origin` and waits until the editor really works. */
async function openEditor(page: Page, origin: string, problems: BrowserProblems): Promise<void> {
  const response = await page.goto(`${origin}/`);
  expect(response?.status(), `GET ${origin}/`).toBe(200);
  expect(response?.headers()['content-type']).toContain('text/html');
  await expect(page).toHaveTitle(/ComfyUI/);
  // The litegraph canvas, the default graph on it (its nodes come from /object_info), the Run button and the
  // node library, which lists the node classes.
  await expect(page.locator('canvas#graph-canvas')).toBeVisible({ timeout: 30_000 });
  await page.waitForFunction(
    () => ((window as unknown as { app?: { graph?: { nodes?: unknown[] } } }).app?.graph?.nodes?.length ?? 0) > 0,
    undefined,
    { timeout: 30_000 },
  );
  expect(await page.evaluate(() => (window as unknown as Record<string, unknown>).__COMFYUI_FRONTEND_VERSION__)).toBe(
    FRONTEND_VERSION,
  );
  await expect(page.getByTestId('queue-button')).toBeVisible();
  await page.locator('.node-library-tab-button').click();
  await expect(page.locator('.node-lib-tree-explorer')).toBeVisible();
  await expect(page.locator('.node-lib-tree-explorer').getByText('sampling', { exact: true })).toBeVisible();
  await problems.settle(15_000, 1_000);
}

function describe(failures: Failure[]): string {
  return failures.map((f) => `${f.key} (${f.what})`).join('\n') || '(none)';
}

test.describe('ComfyUI\'s editor through the editor origin', () => {
  let comfy: OwnFakeComfy;
  let orchestrator: OwnOrchestrator;

  test.beforeAll(async () => {
    comfy = await OwnFakeComfy.start('editor', ['--front-end-root', frontendRoot()]);
    // What the frontend stores on a first start (its version, the tutorial seen), as ComfyUI keeps it.
    const seeded = await fetch(`${comfy.url}/api/settings`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ 'Comfy.InstalledVersion': FRONTEND_VERSION, 'Comfy.TutorialCompleted': true }),
    });
    expect(seeded.status).toBe(200);
    const stats = (await (await fetch(`${comfy.url}/system_stats`)).json()) as { system: { required_frontend_version: string } };
    expect(stats.system.required_frontend_version, 'the frontend this ComfyUI wants').toBe(FRONTEND_VERSION);
    orchestrator = await OwnOrchestrator.start('editor', { COMFY_URL: comfy.url, SERVICE_BACKEND: 'external' });
  });

  test.afterAll(async () => {
    await orchestrator?.stop();
    await comfy?.stop();
  });

  test('works as it does directly, with no failed request the direct connection does not have', async ({ page, problems }, testInfo) => {
    test.setTimeout(180_000);
    // Nothing leaves the machine (the frontend asks api.comfy.org for releases): the same refusal on both pages.
    await page.context().route((url) => NOT_LOCAL(url), (route) => route.abort('blockedbyclient'));

    const direct = record(page, comfy.url);
    await openEditor(page, comfy.url, problems);
    await testInfo.attach('direct-failures.txt', { body: describe(direct.failures), contentType: 'text/plain' });
    // What ComfyUI itself does is not a problem of the editor origin: allowed on both pages.
    for (const failure of direct.failures) {
      const path = new URL(failure.url).pathname;
      if (failure.status !== undefined) problems.allow({ url: path, status: failure.status, method: failure.method });
      else problems.allowFailure({ url: path, method: failure.method, error: failure.error });
    }
    for (const error of direct.errors) {
      const escaped = error.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').split('<origin>').join('http://127\\.0\\.0\\.1:\\d+');
      problems.allowPageError(new RegExp(`^${escaped}`));
    }
    expect(direct.sockets.map((s) => new URL(s.url()).host)).toContain(new URL(comfy.url).host);

    const editorPage = await page.context().newPage();
    const viaEditor = record(editorPage, orchestrator.editorUrl);
    await openEditor(editorPage, orchestrator.editorUrl, problems);
    await testInfo.attach('editor-origin-failures.txt', { body: describe(viaEditor.failures), contentType: 'text/plain' });
    console.log(`[editor] failed directly:\n${describe(direct.failures)}\n[editor] failed through the editor origin:\n${describe(viaEditor.failures)}`);

    const directKeys = new Set(direct.failures.map((f) => f.key));
    const onlyViaEditor = viaEditor.failures.filter((f) => !directKeys.has(f.key));
    expect(onlyViaEditor, `failed only through the editor origin:\n${describe(onlyViaEditor)}\n\ndirectly:\n${describe(direct.failures)}`).toEqual([]);
    const directErrors = new Set(direct.errors);
    const newErrors = viaEditor.errors.filter((e) => !directErrors.has(e));
    expect(newErrors, 'errors only through the editor origin').toEqual([]);

    // The editor's WebSocket goes through the editor origin, carries ComfyUI's greeting and stays open.
    const editorHost = new URL(orchestrator.editorUrl).host;
    const sockets = viaEditor.sockets.filter((s) => new URL(s.url()).pathname === '/ws');
    expect(sockets.map((s) => new URL(s.url()).host), 'the editor\'s WebSockets').toEqual(sockets.map(() => editorHost));
    expect(sockets.length).toBeGreaterThan(0);
    const ws = sockets[sockets.length - 1];
    const greeted = () =>
      (viaEditor.frames.get(ws) ?? []).some((frame) => {
        try {
          const message = JSON.parse(frame) as { type?: string; data?: { sid?: string } };
          return message.type === 'status' && typeof message.data?.sid === 'string';
        } catch {
          return false;
        }
      });
    await expect.poll(greeted, { message: 'the status greeting with a session id' }).toBe(true);
    expect(ws.isClosed()).toBe(false);
    // Everything the editor page asked for went to the editor origin (or was refused on its way out of the machine).
    const local = [...viaEditor.origins].filter((origin) => !NOT_LOCAL(new URL(origin)));
    expect(local, 'origins the editor page used').toEqual([new URL(orchestrator.editorUrl).origin]);
  });

  test('the panel origin refuses ComfyUI\'s pages and names the editor', async ({ request }) => {
    const refused = await request.get(`${orchestrator.url}/api/comfy/`);
    expect(refused.status()).toBe(403);
    expect(refused.headers()['content-type']).toContain('application/json');
    const body = (await refused.json()) as { error: { code: string; details: Record<string, unknown> } };
    expect(body.error.code).toBe('editor_origin_only');
    expect(JSON.stringify(body.error.details)).toContain(new URL(orchestrator.editorUrl).host);
  });
});
