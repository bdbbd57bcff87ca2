// The README's screenshots, from a real run: the fake ComfyUI (its outputs real pictures, its previews real JPEGs)
// behind an Orchestrator of this run's own, with jobs in several states and one running, its preview showing.
// `scripts/screenshots.sh` runs this and writes docs/screenshots/*.png.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { test, expect, type APIRequestContext, type Page } from '@playwright/test';
import { OwnFakeComfy, OwnOrchestrator, REPO_ROOT } from '../harness/servers';

const OUT = path.join(REPO_ROOT, 'docs', 'screenshots');
const PROMPTS = [
  'a lighthouse on a cliff at dawn, volumetric light',
  'a red fox in fresh snow, telephoto',
  'a glass greenhouse full of ferns, morning mist',
  'a tiny robot watering a bonsai, studio light',
];
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function control(request: APIRequestContext, comfy: OwnFakeComfy, body: object) {
  expect((await request.post(`${comfy.url}/__fake/control`, { data: body })).ok()).toBe(true);
}

async function submit(request: APIRequestContext, base: string, prompt: string): Promise<string> {
  const response = await request.post(`${base}/api/jobs`, {
    data: { template: 'sdxl-t2i', params: { prompt, checkpoint: 'tiny-sd15.safetensors', steps: 24, seed: prompt.length } },
  });
  expect(response.status(), await response.text()).toBe(202);
  return ((await response.json()) as { id: string }).id;
}

async function waitFor(request: APIRequestContext, base: string, id: string, statuses: string[]) {
  for (let i = 0; i < 600; i++) {
    const job = (await (await request.get(`${base}/api/jobs/${id}`)).json()) as { status: string };
    if (statuses.includes(job.status)) return;
    await sleep(100);
  }
  throw new Error(`job ${id} never became ${statuses.join(' or ')}`);
}

async function shoot(page: Page, name: string) {
  await page.evaluate(() => document.fonts.ready.then(() => undefined));
  await page.screenshot({ path: path.join(OUT, `${name}.png`) });
}

test('the README screenshots', async ({ page, request }) => {
  fs.mkdirSync(OUT, { recursive: true });
  const comfy = await OwnFakeComfy.start('screenshots', ['--model', 'checkpoints/tiny-sd15.safetensors', '--pictures']);
  const orchestrator = await OwnOrchestrator.start('screenshots', { COMFY_URL: comfy.url, SERVICE_BACKEND: 'external' });
  const base = orchestrator.url;
  try {
    // Finished jobs, quickly.
    await control(request, comfy, { step_delay_ms: 5 });
    for (const prompt of PROMPTS) await waitFor(request, base, await submit(request, base, prompt), ['succeeded']);
    // One ComfyUI refuses (a graph with a missing link), one cancelled while it runs.
    const broken = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'tests', 'fixtures', 'comfyui', 'workflow_no_model.json'), 'utf8'));
    delete broken['3'].inputs.images;
    expect((await request.post(`${base}/api/jobs`, { data: { workflow: broken } })).status()).toBe(422);
    await control(request, comfy, { step_delay_ms: 400 });
    const cancelled = await submit(request, base, 'a city of kites');
    await waitFor(request, base, cancelled, ['running']);
    await request.post(`${base}/api/jobs/${cancelled}/cancel`);
    await waitFor(request, base, cancelled, ['cancelled']);

    // One running, slowly, its preview on the home page and its own page.
    await control(request, comfy, { step_delay_ms: 900 });
    const running = await submit(request, base, 'an orchard in late summer, golden hour');
    await page.goto(`${base}/`);
    await page.locator('textarea[name="p.prompt"]').fill('a harbour town at blue hour, lanterns on the water');
    const thumb = page.locator(`[data-testid="queue"] li[data-job="${running}"] img.preview`);
    await expect.poll(() => thumb.evaluate((img) => (img as HTMLImageElement).naturalWidth).catch(() => 0), { timeout: 60_000 }).toBeGreaterThan(0);
    await shoot(page, 'home');
    await page.goto(`${base}/jobs/${running}`);
    const preview = page.getByTestId('job-preview');
    await expect.poll(() => preview.evaluate((img) => (img as HTMLImageElement).naturalWidth).catch(() => 0), { timeout: 60_000 }).toBeGreaterThan(0);
    await shoot(page, 'job');
    await page.goto(`${base}/jobs`);
    await shoot(page, 'jobs');
    await waitFor(request, base, running, ['succeeded']);
    await page.goto(`${base}/jobs/${running}`);
    await shoot(page, 'job-finished');
    await page.goto(`${base}/gallery`);
    for (const img of await page.locator('[data-testid="gallery-item"] img').all()) {
      await expect.poll(() => img.evaluate((i) => (i as HTMLImageElement).naturalWidth)).toBeGreaterThan(0);
    }
    await shoot(page, 'gallery');
    for (const name of ['diagnostics', 'settings', 'builder']) {
      await page.goto(`${base}/${name}`);
      await page.waitForLoadState('load');
      await sleep(500);
      await shoot(page, name);
    }
  } finally {
    await orchestrator.stop();
    await comfy.stop();
  }
});
