// The gallery, in both languages, on an instance of its own (the fake ComfyUI writes a real picture per run):
// every output as a thumbnail, newest first; the filters and the search narrow it, and the address keeps them.

import * as fs from 'node:fs';
import * as path from 'node:path';
import type { APIRequestContext } from '@playwright/test';
import { test, expect, setLangCookie, type Lang } from '../harness/fixtures';
import { OwnFakeComfy, OwnOrchestrator } from '../harness/servers';

const PROMPTS = ['a lighthouse at dawn', 'a red fox in fresh snow', 'the lighthouse keeper, a portrait'];

async function run(request: APIRequestContext, base: string, prompt: string): Promise<string> {
  const params = { prompt, checkpoint: 'tiny-sd15.safetensors', steps: 4 };
  const response = await request.post(`${base}/api/jobs`, { data: { template: 'sdxl-t2i', params } });
  expect(response.status(), await response.text()).toBe(202);
  const { id } = (await response.json()) as { id: string };
  await expect.poll(async () => ((await (await request.get(`${base}/api/jobs/${id}`)).json()) as { status: string }).status, { timeout: 30_000 }).toBe('succeeded');
  return id;
}

test.describe('the gallery', () => {
  let comfy: OwnFakeComfy;
  let orchestrator: OwnOrchestrator;
  const ids: string[] = [];

  test.beforeAll(async ({ playwright }) => {
    comfy = await OwnFakeComfy.start('gallery', ['--model', 'checkpoints/tiny-sd15.safetensors', '--pictures']);
    orchestrator = await OwnOrchestrator.start('gallery', { COMFY_URL: comfy.url, SERVICE_BACKEND: 'external' });
    const request = await playwright.request.newContext();
    for (const prompt of PROMPTS) ids.push(await run(request, orchestrator.url, prompt));
    await request.dispose();
  });

  test.afterAll(async () => {
    await orchestrator?.stop();
    await comfy?.stop();
  });

  for (const lang of ['en', 'ru'] as Lang[]) {
    test(`lists outputs as thumbnails, filters and searches them (${lang})`, async ({ page, problems }) => {
      await setLangCookie(page, orchestrator.url, lang);
      await page.goto(`${orchestrator.url}/gallery`);
      await expect(page.locator('h1')).toHaveText(lang === 'ru' ? 'Галерея' : 'Gallery');
      const items = page.getByTestId('gallery-item');
      await expect(items).toHaveCount(3);
      expect(await items.evaluateAll((nodes) => nodes.map((n) => (n as HTMLElement).dataset.job))).toEqual([...ids].reverse());
      for (const img of await page.locator('[data-testid="gallery-item"] img').all()) {
        await expect.poll(() => img.evaluate((i) => (i as HTMLImageElement).naturalWidth)).toBeGreaterThan(0);
        expect(await img.getAttribute('src')).toMatch(/\/thumbnail$/);
      }

      await page.getByTestId('gallery-search').fill('lighthouse');
      await expect(items).toHaveCount(2);
      await expect(page).toHaveURL(/\?q=lighthouse$/);
      await page.getByTestId('gallery-search').fill('fox');
      await expect(items).toHaveCount(1);
      await expect(items.first()).toHaveAttribute('data-job', ids[1]);
      await page.getByTestId('gallery-search').fill('');
      await page.locator('select[name="status"]').selectOption('failed');
      await expect(items).toHaveCount(0);
      await expect(page.getByTestId('gallery-empty')).toBeVisible();
      // The address keeps the filters: a reload shows the same.
      await page.reload();
      await expect(page.locator('select[name="status"]')).toHaveValue('failed');
      await expect(page.getByTestId('gallery-empty')).toBeVisible();
      await page.locator('select[name="status"]').selectOption('');
      await expect(items).toHaveCount(3);
      // A thumbnail opens its job.
      await items.first().locator('a').first().click();
      await expect(page).toHaveURL(new RegExp(`/jobs/${ids[2]}$`));
      await problems.settle();
    });
  }

  for (const lang of ['en', 'ru'] as Lang[]) {
    test(`selecting two and deleting them asks first, then removes them with their files (${lang})`, async ({ page, request, problems }) => {
      const doomed = [await run(request, orchestrator.url, `a sandcastle ${lang} one`), await run(request, orchestrator.url, `a sandcastle ${lang} two`)];
      await setLangCookie(page, orchestrator.url, lang);
      await page.goto(`${orchestrator.url}/gallery?q=sandcastle%20${lang}`);
      const items = page.getByTestId('gallery-item');
      await expect(items).toHaveCount(2);
      for (const item of await items.all()) await item.getByTestId('gallery-pick').check();
      await expect(page.getByTestId('gallery-selected')).toHaveText(lang === 'ru' ? '2 выбрано' : '2 selected');

      // Download: each selected file, under its own name.
      const downloads: string[] = [];
      page.on('download', (download) => downloads.push(download.suggestedFilename()));
      await page.getByTestId('gallery-download').click();
      await expect.poll(() => downloads.length).toBe(2);
      expect(downloads.every((name) => name.endsWith('.png'))).toBe(true);

      // Asked first: keeping them deletes nothing.
      await page.getByTestId('gallery-delete').click();
      const dialog = page.getByTestId('gallery-confirm');
      await expect(dialog).toBeVisible();
      await expect(page.getByTestId('gallery-confirm-text')).toContainText('2');
      await page.getByTestId('gallery-confirm-keep').click();
      await expect(items).toHaveCount(2);
      for (const id of doomed) expect((await request.get(`${orchestrator.url}/api/jobs/${id}`)).status()).toBe(200);

      await page.getByTestId('gallery-delete').click();
      await page.getByTestId('gallery-confirm-delete').click();
      await expect(items).toHaveCount(0);
      await expect(page.getByTestId('gallery-selection')).toBeHidden();
      for (const id of doomed) expect((await request.get(`${orchestrator.url}/api/jobs/${id}`)).status()).toBe(404);
      // The files are gone from the data folder.
      for (const id of doomed) expect(fs.existsSync(path.join(orchestrator.dataDir, 'outputs', id))).toBe(false);
      await page.reload();
      await expect(page.getByTestId('gallery-empty')).toBeVisible();
      await problems.settle();
    });
  }

  test('a job page generates again with a new seed, and an output becomes another template\'s input', async ({ page, request, problems }) => {
    const id = ids[0];
    await page.goto(`${orchestrator.url}/jobs/${id}`);
    const waited = page.waitForResponse((r) => r.url().endsWith(`/api/jobs/${id}/again`));
    await page.getByTestId('job-again').click();
    expect((await waited).status()).toBe(202);
    await expect(page).not.toHaveURL(new RegExp(`/jobs/${id}$`));
    const next = page.url().split('/').pop()!;
    // The new job's own page, loaded, and (the page reloads itself when the job ends) at rest.
    await expect(page.locator('main[data-page="job"] h1')).toContainText(next);
    await expect(page.getByTestId('job-status')).toHaveText('succeeded', { timeout: 30_000 });
    await problems.settle();
    const [before, after] = await Promise.all([id, next].map(async (j) => (await (await request.get(`${orchestrator.url}/api/jobs/${j}`)).json()) as { params: { prompt: string; seed: number } }));
    expect(after.params.prompt).toBe(before.params.prompt);
    expect(after.params.seed).not.toBe(before.params.seed);

    // Use as input: the home page opens with the image template chosen and the output in its file field.
    await page.goto(`${orchestrator.url}/jobs/${id}`);
    await page.getByTestId('use-as-input').first().click();
    await expect(page).toHaveURL(/\/\?template=sdxl-i2i&input=/);
    await expect(page.locator('select[name="template"]')).toHaveValue('sdxl-i2i');
    const image = page.locator('.template-fields input[type=file]');
    await expect.poll(() => image.evaluate((input) => (input as HTMLInputElement).files?.length ?? 0)).toBe(1);
    expect(await image.evaluate((input) => (input as HTMLInputElement).files![0].type)).toBe('image/png');
    await problems.settle();
  });

  test('a video output plays in the gallery and seeks with a 206', async ({ page, request, problems }) => {
    const workflow = {
      '1': { class_type: 'EmptyImage', inputs: { width: 64, height: 64, batch_size: 1, color: 0 } },
      '2': { class_type: 'SaveWEBM', inputs: { images: ['1', 0], filename_prefix: 'clip', codec: 'vp9', fps: 12, crf: 32 } },
    };
    const submitted = await request.post(`${orchestrator.url}/api/jobs`, { data: { workflow } });
    expect(submitted.status(), await submitted.text()).toBe(202);
    const { id } = (await submitted.json()) as { id: string };
    await expect.poll(async () => ((await (await request.get(`${orchestrator.url}/api/jobs/${id}`)).json()) as { status: string }).status, { timeout: 30_000 }).toBe('succeeded');

    const partial: number[] = [];
    page.on('response', (response) => {
      if (response.url().includes(`/api/jobs/${id}/outputs/`)) partial.push(response.status());
    });
    await page.goto(`${orchestrator.url}/gallery`);
    const video = page.locator(`[data-testid="gallery-item"][data-job="${id}"] video`);
    await expect(video).toBeVisible();
    const at = await video.evaluate(async (node) => {
      const v = node as HTMLVideoElement;
      if (v.readyState < 1) await new Promise((resolve) => v.addEventListener('loadedmetadata', resolve, { once: true }));
      v.currentTime = 2.5;
      await new Promise((resolve) => v.addEventListener('seeked', resolve, { once: true }));
      return { time: v.currentTime, duration: v.duration };
    });
    expect(at.duration).toBeGreaterThan(3);
    expect(at.time).toBeGreaterThan(2);
    expect(partial).toContain(206);
    await problems.settle();
  });

  test('more outputs load as the end of the grid comes into view', async ({ page, request, problems }) => {
    // More than one page (24 jobs) of matching outputs.
    const ids: string[] = [];
    for (let n = 0; n < 26; n++) {
      const params = { prompt: `tide pool number ${n}`, checkpoint: 'tiny-sd15.safetensors', steps: 2, seed: n };
      const response = await request.post(`${orchestrator.url}/api/jobs`, { data: { template: 'sdxl-t2i', params } });
      expect(response.status(), await response.text()).toBe(202);
      ids.push(((await response.json()) as { id: string }).id);
    }
    for (const id of ids) {
      await expect.poll(async () => ((await (await request.get(`${orchestrator.url}/api/jobs/${id}`)).json()) as { status: string }).status, { timeout: 60_000 }).toBe('succeeded');
    }
    await page.setViewportSize({ width: 1280, height: 700 });
    await page.goto(`${orchestrator.url}/gallery?q=tide`);
    const items = page.getByTestId('gallery-item');
    // The first page fills the screen and more; the rest comes on scrolling.
    await expect(items.first()).toBeVisible();
    const first = await items.count();
    expect(first).toBeLessThan(26);
    await page.getByTestId('gallery-more').scrollIntoViewIfNeeded();
    await expect(items).toHaveCount(26);
    expect(await items.evaluateAll((nodes) => nodes.map((n) => (n as HTMLElement).dataset.job))).toEqual([...ids].reverse());
    await problems.settle();
  });
});
