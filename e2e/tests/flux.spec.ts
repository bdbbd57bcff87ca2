// The FLUX confirmation modal on the "online" instance (ALLOW_GENERATION=false, no BFL key): the submit button
// only asks for a dry run and shows its price; Cancel sends nothing more; Confirm sends the paid request with
// the token, which this server refuses with 403 generation_disabled, and the modal says so.

import type { Page, Request } from '@playwright/test';
import { test, expect, type BrowserProblems } from '../harness/fixtures';

const MODELS = ['flux-pro-1.1', 'flux-pro-1.1-ultra', 'flux-dev', 'flux-kontext-pro', 'flux-kontext-max'];
const PROMPT = 'A lighthouse on a cliff at dawn, e2e test';
const DISABLED = 'Generation disabled. Set ALLOW_GENERATION=true on the server to allow paid calls';

interface FluxCall {
  body: Record<string, unknown>;
  request: Request;
}

/** Every POST to /api/flux/generate the page makes, with its JSON body. */
function recordFluxCalls(page: Page): FluxCall[] {
  const calls: FluxCall[] = [];
  page.on('request', (request) => {
    if (request.method() === 'POST' && new URL(request.url()).pathname === '/api/flux/generate') {
      calls.push({ body: (request.postDataJSON() ?? {}) as Record<string, unknown>, request });
    }
  });
  return calls;
}

/** Opens the home page, picks FLUX, fills the form and submits it; returns the dry run's answer. */
async function openModal(page: Page, problems: BrowserProblems) {
  await page.goto('/');
  // The page loads the model lists (and re-renders the ComfyUI fields) after its first status poll; a race with
  // that is tested on its own below.
  await problems.settle();
  const form = page.locator('form[data-testid="generate-form"]');
  await form.locator('select[name="backend"]').selectOption('flux');

  const model = form.locator('select[name="model"]');
  await expect(model).toBeVisible();
  await expect(model).toHaveValue('flux-pro-1.1');
  const options = await model.locator('option').evaluateAll((all) => all.map((o) => (o as HTMLOptionElement).value));
  expect(options).toEqual(expect.arrayContaining(MODELS));
  for (const name of ['prompt', 'width', 'height', 'aspect_ratio', 'raw']) {
    await expect(form.locator(`[name="${name}"]`), `FLUX field ${name}`).toHaveCount(1);
  }

  await form.locator('textarea[name="prompt"]').fill(PROMPT);
  const width = form.locator('input[name="width"]');
  const height = form.locator('input[name="height"]');
  if ((await width.isVisible()) && (await width.isEditable())) await width.fill('1024');
  if ((await height.isVisible()) && (await height.isEditable())) await height.fill('768');

  const dryRun = page.waitForResponse(
    (r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/api/flux/generate',
  );
  await form.getByTestId('generate-submit').click();
  const answer = await dryRun;
  expect(answer.status(), await answer.text()).toBe(200);
  const body = (await answer.json()) as { dryRun: boolean; confirmToken: string; model: string };
  expect(body.dryRun).toBe(true);

  const modal = page.locator('dialog[data-testid="flux-modal"]');
  await expect(modal).toBeVisible();
  await expect(modal).toHaveAttribute('open', '');
  await expect(modal).toContainText('flux-pro-1.1');
  await expect(modal).toContainText(PROMPT);
  await expect(modal).toContainText(/1024\s*[×x*]\s*768/);
  await expect(modal.getByTestId('flux-cost')).toHaveText(/^\s*\$0\.040\s*$/);
  return { modal, dryRun: body };
}

test('the FLUX modal shows the dry run and Cancel sends nothing', async ({ page, problems }) => {
  const calls = recordFluxCalls(page);
  const { modal } = await openModal(page, problems);

  await modal.getByTestId('flux-cancel').click();
  await expect(modal).toBeHidden();
  await expect(modal).not.toHaveAttribute('open', /.*/);
  // Give a stray request time to show up.
  await problems.settle();
  await page.waitForTimeout(1000);

  expect(calls, 'POSTs to /api/flux/generate').toHaveLength(1);
  expect(calls[0].body.dryRun, 'the only call is a dry run').not.toBe(false);
  expect(calls[0].body.prompt).toBe(PROMPT);
  expect(calls[0].body.model ?? 'flux-pro-1.1').toBe('flux-pro-1.1');
  expect(calls.filter((call) => call.body.dryRun === false)).toHaveLength(0);
  expect(calls.filter((call) => call.body.confirmToken !== undefined)).toHaveLength(0);
});

test('Confirm with generation disabled shows the 403 message', async ({ page, problems }) => {
  problems.allow({ method: 'POST', url: '/api/flux/generate', status: 403 });
  const calls = recordFluxCalls(page);
  const { modal, dryRun } = await openModal(page, problems);

  const paid = page.waitForResponse(
    (r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/api/flux/generate',
  );
  await modal.getByTestId('flux-confirm').click();
  const answer = await paid;
  expect(answer.status()).toBe(403);
  const error = (await answer.json()) as { error: { code: string; message: string } };
  expect(error.error.code).toBe('generation_disabled');

  await expect(modal.getByTestId('flux-message')).toBeVisible();
  await expect(modal.getByTestId('flux-message')).toContainText(DISABLED);

  expect(calls, 'POSTs to /api/flux/generate').toHaveLength(2);
  expect(calls[0].body.dryRun).not.toBe(false);
  expect(calls[1].body.dryRun).toBe(false);
  expect(calls[1].body.confirmToken).toBe(dryRun.confirmToken);
  expect(calls[1].body.prompt).toBe(PROMPT);
  await problems.settle();
});

test('choosing FLUX before the model lists have loaded still submits the dry run', async ({ page, problems }) => {
  // Hold /api/models back until FLUX is chosen, as on a slow ComfyUI: the ComfyUI fields rendered when it arrives
  // must not stay required while hidden (the browser would refuse to submit the form).
  let release!: () => void;
  const held = new Promise<void>((resolve) => (release = resolve));
  await page.route('**/api/models**', async (route) => {
    await held;
    await route.continue();
  });
  await page.goto('/');
  const form = page.locator('form[data-testid="generate-form"]');
  await form.locator('select[name="backend"]').selectOption('flux');
  await form.locator('textarea[name="prompt"]').fill(PROMPT);
  const models = page.waitForResponse((r) => new URL(r.url()).pathname === '/api/models');
  release();
  await models;
  await problems.settle();

  const dryRun = page.waitForRequest(
    (r) => r.method() === 'POST' && new URL(r.url()).pathname === '/api/flux/generate',
    { timeout: 5_000 },
  );
  await form.getByTestId('generate-submit').click();
  await dryRun;
  await expect(page.locator('dialog[data-testid="flux-modal"]')).toBeVisible();
  await page.locator('dialog[data-testid="flux-modal"]').getByTestId('flux-cancel').click();
});
