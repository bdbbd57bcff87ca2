// The test fixtures every spec imports instead of @playwright/test's own:
//
// - `instances`, `igniteURL`: where the servers started by the global setup listen; `baseURL` is the "online"
//   instance, so `page.goto('/')` opens it.
// - `onlineJob`: the id of a real job, run to its end on the "online" instance the first time a test asks for it
//   (once per worker).
// - `problems`: records, for every page of the test's browser context, console messages of type 'error',
//   uncaught exceptions ('pageerror'), failed requests ('requestfailed') and responses with status >= 400, and
//   fails the test at its end if any occurred that the test did not declare with `problems.allow(...)` (a
//   response), `problems.allowFailure(...)` (a request that failed without an answer) or
//   `problems.allowPageError(...)` (an exception or console error). A visible script-error banner fails the test
//   too.

import { test as base, expect, type ConsoleMessage, type Page, type Request, type Response } from '@playwright/test';
import { runJob } from './api';
import { readInstances, type Instances } from './servers';

export { expect };

/** A response the test expects (and so does not count as a problem): same status, and a matching URL and method. */
export interface AllowedResponse {
  status: number;
  /** A path (compared with the URL's pathname) or a pattern (tested against the whole URL). */
  url: string | RegExp;
  method?: string;
}

/** A request expected to fail without an answer: a matching URL and method, and the error if given. */
export interface AllowedFailure {
  /** A path (compared with the URL's pathname) or a pattern (tested against the whole URL). */
  url: string | RegExp;
  method?: string;
  /** Chromium's error text, e.g. `net::ERR_ABORTED`. */
  error?: string;
}

interface Recorded {
  kind: 'console' | 'pageerror' | 'requestfailed' | 'response' | 'websocket' | 'banner';
  text: string;
  url?: string;
  status?: number;
  method?: string;
  error?: string;
}

const FAILED_TO_LOAD = /^Failed to load resource: the server responded with a status of (\d+)/;

function pathMatches(rule: AllowedResponse, url: string | undefined, status: number | undefined, method?: string) {
  if (url === undefined || status !== rule.status) return false;
  if (rule.method && method && rule.method.toUpperCase() !== method.toUpperCase()) return false;
  if (rule.url instanceof RegExp) return rule.url.test(url);
  try {
    return new URL(url).pathname === rule.url;
  } catch {
    return false;
  }
}

function failureMatches(rule: AllowedFailure, record: Recorded): boolean {
  if (record.url === undefined) return false;
  if (rule.method && record.method && rule.method.toUpperCase() !== record.method.toUpperCase()) return false;
  if (rule.error && rule.error !== record.error) return false;
  if (rule.url instanceof RegExp) return rule.url.test(record.url);
  try {
    return new URL(record.url).pathname === rule.url;
  } catch {
    return false;
  }
}

export class BrowserProblems {
  private readonly recorded: Recorded[] = [];
  private readonly allowed: AllowedResponse[] = [];
  private readonly allowedErrors: RegExp[] = [];
  private readonly allowedFailures: AllowedFailure[] = [];
  private readonly inflight = new Set<Request>();
  private readonly started = new WeakMap<Request, number>();
  /** Per page: the sequence number of its latest main-frame navigation request. */
  private readonly lastNavigation = new WeakMap<Page, number>();
  private seq = 0;
  private readonly pages: Page[] = [];

  /** Declares a response with status >= 400 as expected (its console "Failed to load resource" line too). */
  allow(rule: AllowedResponse): void {
    this.allowed.push(rule);
  }

  /** Declares a request that fails without an answer (e.g. `net::ERR_ABORTED`) as expected. */
  allowFailure(rule: AllowedFailure): void {
    this.allowedFailures.push(rule);
  }

  /** Declares an uncaught exception (and its console line) the test provokes on purpose. */
  allowPageError(message: RegExp): void {
    this.allowedErrors.push(message);
  }

  attach(page: Page): void {
    if (this.pages.includes(page)) return;
    this.pages.push(page);
    page.on('console', (message: ConsoleMessage) => {
      if (message.type() !== 'error') return;
      const location = message.location();
      const where = location.url ? ` (at ${location.url}${location.lineNumber ? `:${location.lineNumber}` : ''})` : '';
      const status = FAILED_TO_LOAD.exec(message.text());
      this.recorded.push({
        kind: 'console',
        text: `console error: ${message.text()}${where}`,
        url: location.url,
        status: status ? Number(status[1]) : undefined,
      });
    });
    page.on('pageerror', (error) => {
      this.recorded.push({ kind: 'pageerror', text: `uncaught exception: ${error.stack ?? error.message}` });
    });
    page.on('request', (request) => {
      this.seq += 1;
      this.started.set(request, this.seq);
      if (request.isNavigationRequest() && request.frame() === page.mainFrame()) this.lastNavigation.set(page, this.seq);
      if (request.resourceType() !== 'eventsource' && request.resourceType() !== 'websocket') this.inflight.add(request);
    });
    page.on('requestfinished', (request) => this.inflight.delete(request));
    page.on('requestfailed', (request) => {
      this.inflight.delete(request);
      const error = request.failure()?.errorText ?? 'failed';
      // A request still running when its page navigates away is cancelled by the browser: not a fault of the page.
      const started = this.started.get(request) ?? 0;
      const navigation = this.lastNavigation.get(page) ?? 0;
      if (error === 'net::ERR_ABORTED' && started < navigation) return;
      this.recorded.push({
        kind: 'requestfailed',
        text: `request failed: ${request.method()} ${request.url()}: ${error}`,
        url: request.url(),
        method: request.method(),
        error,
      });
    });
    page.on('response', (response: Response) => {
      const type = response.headers()['content-type'] ?? '';
      // A stream (server-sent events) stays open: it no longer counts as pending once its headers arrived.
      if (type.includes('text/event-stream')) this.inflight.delete(response.request());
      if (response.status() >= 400) {
        const request = response.request();
        this.recorded.push({
          kind: 'response',
          text: `HTTP ${response.status()} for ${request.method()} ${response.url()}`,
          url: response.url(),
          status: response.status(),
          method: request.method(),
        });
      }
    });
    page.on('websocket', (socket) => {
      socket.on('socketerror', (error) => {
        this.recorded.push({ kind: 'websocket', text: `WebSocket ${socket.url()} error: ${error}` });
      });
    });
  }

  /** Waits until the page has no request pending (streams aside) for `quietMs`, at most `timeoutMs`. */
  async settle(timeoutMs = 10_000, quietMs = 500): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let quietSince = Date.now();
    while (Date.now() < deadline) {
      if (this.inflight.size > 0) quietSince = Date.now();
      else if (Date.now() - quietSince >= quietMs) return;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  /** Every recorded problem that no `allow` rule covers. */
  unexpected(): string[] {
    return this.recorded
      .filter((record) => {
        if (record.kind === 'response') return !this.allowed.some((rule) => pathMatches(rule, record.url, record.status, record.method));
        if (record.kind === 'console' && record.status !== undefined) {
          return !this.allowed.some((rule) => pathMatches({ ...rule, method: undefined }, record.url, record.status));
        }
        if (record.kind === 'pageerror' || record.kind === 'console' || record.kind === 'banner') {
          return !this.allowedErrors.some((pattern) => pattern.test(record.text));
        }
        if (record.kind === 'requestfailed') {
          return !this.allowedFailures.some((rule) => failureMatches(rule, record));
        }
        return true;
      })
      .map((record) => record.text);
  }

  async checkBanners(): Promise<void> {
    for (const page of this.pages) {
      if (page.isClosed()) continue;
      const banner = page.locator('[data-testid=script-error]');
      try {
        if ((await banner.count()) > 0 && (await banner.first().isVisible())) {
          const text = (await banner.first().innerText()).trim();
          this.recorded.push({ kind: 'banner', text: `script-error banner visible on ${page.url()}: ${text}` });
        }
      } catch {
        // page went away meanwhile
      }
    }
  }
}

interface TestFixtures {
  problems: BrowserProblems;
  /** The "ignite" instance's base URL (supervised ComfyUI, not running until Ignite). */
  igniteURL: string;
}

interface WorkerFixtures {
  instances: Instances;
  onlineJob: string;
}

export const test = base.extend<TestFixtures, WorkerFixtures>({
  instances: [async ({}, use) => use(readInstances()), { scope: 'worker' }],
  onlineJob: [
    async ({ playwright, instances }, use) => {
      const request = await playwright.request.newContext();
      const job = await runJob(request, instances.online.url);
      await request.dispose();
      await use(job.id);
    },
    { scope: 'worker' },
  ],
  baseURL: async ({ instances }, use) => use(instances.online.url),
  igniteURL: async ({ instances }, use) => use(instances.ignite.url),
  problems: async ({}, use) => use(new BrowserProblems()),
  page: async ({ page, problems }, use, testInfo) => {
    problems.attach(page);
    page.context().on('page', (other) => problems.attach(other));
    await use(page);
    // Let late requests and their errors arrive before judging.
    await problems.settle(5_000);
    await problems.checkBanners();
    const unexpected = problems.unexpected();
    if (unexpected.length > 0) {
      await testInfo.attach('browser-problems.txt', { body: unexpected.join('\n'), contentType: 'text/plain' });
      throw new Error(`The browser reported ${unexpected.length} problem(s):\n- ${unexpected.join('\n- ')}`);
    }
  },
});

export type Lang = 'en' | 'ru';

/** Sets the `lang` cookie for `url`'s origin in the page's context. */
export async function setLangCookie(page: Page, url: string, lang: Lang): Promise<void> {
  await page.context().addCookies([{ name: 'lang', value: lang, url }]);
}
