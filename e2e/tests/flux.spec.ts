// The FLUX confirmation modal on the "online" instance (ALLOW_GENERATION=false, no BFL key): the submit button
// only asks for a dry run and shows its price; Cancel sends nothing more; Confirm sends the paid request with
// the token, which this server refuses with 403 generation_disabled, and the modal says so.
//
// Then on an instance of this spec's own with generation allowed, a BFL key, a BFL address where nothing listens
// and a daily budget of $0: Confirm gets the real server's 402 (the budget cannot cover the price; nothing is
// stored or sent), and, after the server restarted between the dry run and Confirm (a new signing key), its 409
// confirmation_mismatch. The modal shows each message as the server words it.

import type { Page, Request } from '@playwright/test';
import { test, expect, type BrowserProblems } from '../harness/fixtures';
import { freePort, OwnOrchestrator } from '../harness/servers';

const MODELS = ['flux-pro-1.1', 'flux-pro-1.1-ultra', 'flux-dev', 'flux-kontext-pro', 'flux-kontext-max'];
const PROMPT = 'A lighthouse on a cliff at dawn, e2e test';
const DISABLED = 'Generation disabled. Set ALLOW_GENERATION=true on the server to allow paid calls';
// src/error.rs (BudgetExceeded) for flux-pro-1.1's $0.04 against a budget of $0.
const OVER_BUDGET = "the day's budget for paid generation (FLUX and paid ComfyUI nodes) cannot cover this request: $0.040 needed, $0.000 of $0.00 left";
// src/flux/confirm.rs (TokenProblem::Mismatch).
const MISMATCH =
  'The confirmToken does not match this request (the payload or its price changed, or the server restarted): run the dry run again';

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

/** Opens the home page (of `base`, else the "online" instance), picks FLUX, fills the form and submits it;
 * returns the modal and the dry run's answer. */
async function openModal(page: Page, problems: BrowserProblems, base = '') {
  await page.goto(`${base}/`);
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

/** Clicks Confirm and returns the paid request's answer: its status and error. */
async function confirm(page: Page, modal: ReturnType<Page['locator']>) {
  const paid = page.waitForResponse(
    (r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/api/flux/generate',
  );
  await modal.getByTestId('flux-confirm').click();
  const answer = await paid;
  const body = (await answer.json()) as { error: { code: string; message: string; details: Record<string, unknown> } };
  return { status: answer.status(), error: body.error };
}

test.describe('with generation allowed', () => {
  let paid: OwnOrchestrator;

  test.beforeAll(async ({ instances }) => {
    const taken = new Set([instances.online.port, instances.online.comfyPort, instances.ignite.port, instances.ignite.comfyPort]);
    const nothingListens = await freePort(taken);
    paid = await OwnOrchestrator.start('paid', {
      COMFY_URL: instances.online.comfyUrl,
      SERVICE_BACKEND: 'external',
      ALLOW_GENERATION: 'true',
      BFL_API_KEY: 'e2e-bfl-key-that-goes-nowhere',
      BFL_BASE_URL: `http://127.0.0.1:${nothingListens}`,
      FLUX_DAILY_BUDGET_USD: '0',
    });
  });

  test.afterAll(async () => {
    await paid?.stop();
  });

  test('Confirm over the day’s budget shows the 402 message and nothing is stored', async ({ page, request, problems }) => {
    problems.allow({ method: 'POST', url: '/api/flux/generate', status: 402 });
    const calls = recordFluxCalls(page);
    const { modal, dryRun } = await openModal(page, problems, paid.url);

    const { status, error } = await confirm(page, modal);
    expect(status).toBe(402);
    expect(error.code).toBe('budget_exceeded');
    expect(error.details).toMatchObject({ price: 0.04, limit: 0, left: 0, currency: 'USD' });
    await expect(modal.getByTestId('flux-message')).toBeVisible();
    await expect(modal.getByTestId('flux-message')).toHaveText(OVER_BUDGET);
    // Asking again cannot help today.
    await expect(modal.getByTestId('flux-confirm')).toBeDisabled();

    expect(calls, 'POSTs to /api/flux/generate').toHaveLength(2);
    expect(calls[1].body.dryRun).toBe(false);
    expect(calls[1].body.confirmToken).toBe(dryRun.confirmToken);
    expect(calls[1].request.headers()['idempotency-key'], 'an Idempotency-Key').toBeTruthy();
    // No job, no charge: the reservation was refused before anything was written.
    const jobs = await request.get(`${paid.url}/api/jobs`);
    expect(jobs.status()).toBe(200);
    expect(((await jobs.json()) as { jobs: unknown[] }).jobs).toEqual([]);
    await problems.settle();
  });

  test('Confirm after the server restarted shows the 409 message, and a new dry run can be confirmed', async ({ page, problems }) => {
    problems.allow({ method: 'POST', url: '/api/flux/generate', status: 409 });
    problems.allow({ method: 'POST', url: '/api/flux/generate', status: 402 });
    const calls = recordFluxCalls(page);
    const { modal, dryRun } = await openModal(page, problems, paid.url);

    // The page polls the server every few seconds: its requests wait while the server restarts, rather than fail.
    let restarted!: () => void;
    const back = new Promise<void>((resolve) => (restarted = resolve));
    const hold = async (route: import('@playwright/test').Route) => {
      await back;
      await route.continue();
    };
    await page.route(`${paid.url}/**`, hold);
    await problems.settle();
    await paid.restart();
    restarted();
    await page.unroute(`${paid.url}/**`, hold);

    const first = await confirm(page, modal);
    expect(first.status).toBe(409);
    expect(first.error.code).toBe('confirmation_mismatch');
    await expect(modal.getByTestId('flux-message')).toHaveText(MISMATCH);
    await expect(modal.getByTestId('flux-confirm')).toBeEnabled();
    expect(calls[1].body.confirmToken).toBe(dryRun.confirmToken);

    // As the message says: a new dry run, whose token this server signed, gets past the confirmation (to the
    // budget, which is $0 here).
    await modal.getByTestId('flux-cancel').click();
    await expect(modal).toBeHidden();
    const again = page.waitForResponse(
      (r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/api/flux/generate',
    );
    await page.locator('form[data-testid="generate-form"]').getByTestId('generate-submit').click();
    const newDryRun = (await (await again).json()) as { confirmToken: string };
    expect(newDryRun.confirmToken).not.toBe(dryRun.confirmToken);
    await expect(modal).toBeVisible();
    await expect(modal.getByTestId('flux-message')).toHaveText('');
    const second = await confirm(page, modal);
    expect(second.status).toBe(402);
    expect(second.error.code).toBe('budget_exceeded');
    await expect(modal.getByTestId('flux-message')).toHaveText(OVER_BUDGET);
    expect(calls.map((call) => call.body.dryRun === false)).toEqual([false, true, false, true]);
    expect(calls[3].body.confirmToken).toBe(newDryRun.confirmToken);
    await problems.settle();
  });
});
