// Watching a job, in both languages. Live previews: ComfyUI (the fake, replaying the recorded sampler run slowly,
// each preview frame a real JPEG of its own colour) sends a preview per step; the home page's queue and the job's
// page show the newest in place while the job runs (each a loaded image, at least two different ones), then the job
// page shows the output. Word when it ends: the tab's title and icon say running, then finished; a job that ends
// while the tab is in the background brings one notification, once the user asked for them with a click.

import * as fs from 'node:fs';
import * as path from 'node:path';
import type { APIRequestContext, Locator } from '@playwright/test';
import { test, expect, setLangCookie, type Lang } from '../harness/fixtures';
import { OwnFakeComfy, OwnOrchestrator, REPO_ROOT } from '../harness/servers';

const WORKFLOW = JSON.parse(
  fs.readFileSync(path.join(REPO_ROOT, 'tests', 'fixtures', 'comfyui', 'workflow_ksampler.json'), 'utf8'),
);

async function submit(request: APIRequestContext, base: string): Promise<string> {
  const response = await request.post(`${base}/api/jobs`, { data: { workflow: WORKFLOW } });
  expect(response.status(), await response.text()).toBe(202);
  return ((await response.json()) as { id: string }).id;
}

/** Watches `img` until it has shown `count` different loaded previews; answers the numbers seen. */
async function watchPreviews(img: Locator, count: number): Promise<Set<string>> {
  const seen = new Set<string>();
  await expect
    .poll(
      async () => {
        const shown = await img
          .evaluate((node) => {
            const image = node as HTMLImageElement;
            return !image.hidden && image.complete && image.naturalWidth > 0 ? image.dataset.number ?? null : null;
          })
          .catch(() => null);
        if (shown) seen.add(shown);
        return seen.size;
      },
      { timeout: 30_000, intervals: [50] },
    )
    .toBeGreaterThanOrEqual(count);
  return seen;
}

test.describe('live previews', () => {
  let comfy: OwnFakeComfy;
  let orchestrator: OwnOrchestrator;

  test.beforeAll(async () => {
    // The recorded run replayed with 250 ms between its messages: four previews over a couple of seconds.
    comfy = await OwnFakeComfy.start('previews', ['--model', 'checkpoints/tiny-sd15.safetensors', '--step-delay-ms', '250']);
    orchestrator = await OwnOrchestrator.start('previews', { COMFY_URL: comfy.url, SERVICE_BACKEND: 'external' });
  });

  test.afterAll(async () => {
    await orchestrator?.stop();
    await comfy?.stop();
  });

  for (const lang of ['en', 'ru'] as Lang[]) {
    test(`the queue and the job page show a running job's preview changing (${lang})`, async ({ page, request, problems }) => {
      test.setTimeout(90_000);
      await setLangCookie(page, orchestrator.url, lang);

      await page.goto(`${orchestrator.url}/`);
      await expect(page.locator('html')).toHaveAttribute('lang', lang);
      // The form's model picker lists what this ComfyUI has, not the template's default.
      const form = page.locator('form[data-testid="generate-form"]');
      await form.locator('select[name="template"]').selectOption('sdxl-t2i');
      await expect(form.locator('[data-param="checkpoint"] select option')).toHaveText(['tiny-sd15.safetensors']);
      const queued = await submit(request, orchestrator.url);
      const row = page.locator(`[data-testid="queue"] li[data-job="${queued}"]`);
      const thumb = row.locator('img[data-testid="queue-preview"]');
      await watchPreviews(thumb, 2);
      await expect(thumb).toHaveAttribute('alt', lang === 'ru' ? 'превью' : 'preview');

      const id = await submit(request, orchestrator.url);
      await page.goto(`${orchestrator.url}/jobs/${id}`);
      const preview = page.getByTestId('job-preview');
      await expect(preview).toHaveAttribute('alt', lang === 'ru' ? 'Превью выполняющейся задачи' : 'Preview of the running job');
      await watchPreviews(preview, 2);
      // The end: the page reloads with the output in place of the preview.
      await expect(page.getByTestId('job-status')).toHaveText('succeeded', { timeout: 30_000 });
      await expect(page.getByTestId('job-preview')).toHaveCount(0);
      const output = page.getByTestId('job-outputs').locator('img').first();
      await expect.poll(() => output.evaluate((img) => (img as HTMLImageElement).naturalWidth)).toBeGreaterThan(0);
      await problems.settle();
    });
  }

  for (const lang of ['en', 'ru'] as Lang[]) {
    test(`the tab says a job runs and ends, and a job ending in the background notifies once (${lang})`, async ({ page, request, problems }) => {
      test.setTimeout(90_000);
      await page.context().grantPermissions(['notifications'], { origin: orchestrator.url });
      // What the page shows the user through the browser, recorded; and a tab the test can put in the background.
      await page.addInitScript(() => {
        const w = window as unknown as { __notes: { title: string; tag?: string }[]; __hidden: boolean };
        w.__notes = [];
        w.__hidden = false;
        class Recorded {
          static permission = 'granted';
          static requestPermission() { return Promise.resolve('granted'); }
          onclick: (() => void) | null = null;
          constructor(title: string, options: { tag?: string } = {}) { w.__notes.push({ title, tag: options.tag }); }
        }
        (window as unknown as { Notification: unknown }).Notification = Recorded;
        Object.defineProperty(Document.prototype, 'hidden', { configurable: true, get: () => w.__hidden });
      });
      await setLangCookie(page, orchestrator.url, lang);
      await page.goto(`${orchestrator.url}/`);
      const toggle = page.getByTestId('notify-toggle');
      await expect(toggle).toHaveText(lang === 'ru' ? 'Уведомлять о завершении задач' : 'Notify me when a job ends');
      await toggle.click();
      await expect(toggle).toHaveAttribute('aria-pressed', 'true');
      await expect(toggle).toHaveText(lang === 'ru' ? 'Уведомления включены (нажмите, чтобы выключить)' : 'Notifications on (click to stop)');

      const icon = page.locator('link[rel=icon]');
      const id = await submit(request, orchestrator.url);
      await expect(icon).toHaveAttribute('href', '/assets/favicon-running.svg', { timeout: 20_000 });
      await expect(page).toHaveTitle(/^▶ 1 · /);
      await page.evaluate(() => {
        (window as unknown as { __hidden: boolean }).__hidden = true;
        document.dispatchEvent(new Event('visibilitychange'));
      });
      await expect(icon).toHaveAttribute('href', '/assets/favicon-done.svg', { timeout: 30_000 });
      await expect(page).toHaveTitle(/^✓ /);
      const notes = await page.evaluate(() => (window as unknown as { __notes: unknown[] }).__notes);
      expect(notes).toEqual([{ title: lang === 'ru' ? 'Задача выполнена' : 'Job finished', tag: id }]);
      // Back in front: the mark goes.
      await page.evaluate(() => {
        (window as unknown as { __hidden: boolean }).__hidden = false;
        document.dispatchEvent(new Event('visibilitychange'));
      });
      await expect(icon).toHaveAttribute('href', '/assets/favicon.svg');

      // A finished job's own page says so in its tab.
      await page.goto(`${orchestrator.url}/jobs/${id}`);
      await expect(page.locator('link[rel=icon]')).toHaveAttribute('href', '/assets/favicon-done.svg');
      await expect(page).toHaveTitle(/^✓ /);
      await problems.settle();
    });
  }
});
