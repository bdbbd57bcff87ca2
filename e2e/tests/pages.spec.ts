// What the pages show on the "online" instance (external ComfyUI running, no COMFY_DIR, no BFL or v0 key).

import { test, expect } from '../harness/fixtures';

test.describe('diagnostics', () => {
  test('shows every section and refreshes from /api/status every 10 s', async ({ page, problems }) => {
    test.setTimeout(60_000);
    problems.allow({ url: '/api/comfy/validate-paths', status: 503 });
    await page.goto('/diagnostics');
    for (const id of ['diag-services', 'diag-comfy', 'diag-models', 'diag-paths', 'diag-external', 'diag-database']) {
      await expect(page.getByTestId(id), id).toBeVisible();
    }
    for (const id of ['diag-ignite', 'diag-rescan', 'diag-create-paths']) {
      await expect(page.getByTestId(id), id).toBeVisible();
    }
    // Without COMFY_DIR there is no extra_model_paths.yaml to check.
    await expect(page.getByTestId('diag-paths')).toContainText('COMFY_DIR');
    await expect(page.getByTestId('diag-paths')).toContainText(/not (set|configured)/i);
    await problems.settle();

    const refresh = await page.waitForRequest((r) => r.method() === 'GET' && new URL(r.url()).pathname === '/api/status', {
      timeout: 15_000,
    });
    const response = await refresh.response();
    expect(response?.status()).toBe(200);
    await problems.settle();
  });

  test('rescanning the models works without an error', async ({ page, problems }) => {
    problems.allow({ url: '/api/comfy/validate-paths', status: 503 });
    await page.goto('/diagnostics');
    await problems.settle();
    await page.getByTestId('diag-rescan').click();
    await problems.settle();
    await expect(page.getByTestId('diag-models')).toBeVisible();
  });

  test('Create default paths asks first, and dismissing sends nothing', async ({ page, problems }) => {
    problems.allow({ url: '/api/comfy/validate-paths', status: 503 });
    // This instance has no COMFY_DIR, so the one write that is let through is refused with 503.
    problems.allow({ method: 'POST', url: '/api/comfy/create-default-paths', status: 503 });
    const writes: string[] = [];
    page.on('request', (request) => {
      if (new URL(request.url()).pathname === '/api/comfy/create-default-paths') writes.push(`${request.method()} ${request.postData()}`);
    });
    await page.goto('/diagnostics');
    await problems.settle();
    const button = page.getByTestId('diag-create-paths');
    const ask = 'Back up the current extra_model_paths.yaml and write a default one? Base folder:';

    const dismissed = new Promise<{ type: string; message: string }>((resolve) => {
      page.once('dialog', async (dialog) => {
        resolve({ type: dialog.type(), message: dialog.message() });
        await dialog.dismiss();
      });
    });
    await button.click();
    expect(await dismissed).toEqual({ type: 'prompt', message: ask });
    await problems.settle();
    expect(writes, 'requests after the question was dismissed').toEqual([]);
    await expect(page.locator('#diag-message')).toHaveText('');

    // Answering it sends exactly one write, with the folder given.
    page.once('dialog', (dialog) => dialog.accept('/srv/e2e-models'));
    const write = page.waitForResponse((r) => new URL(r.url()).pathname === '/api/comfy/create-default-paths');
    await button.click();
    const answer = await write;
    expect(answer.status()).toBe(503);
    expect(((await answer.json()) as { error: { code: string } }).error.code).toBe('comfy_dir_not_configured');
    await expect(page.locator('#diag-message')).toContainText('COMFY_DIR');
    expect(writes).toHaveLength(1);
    expect(writes[0]).toMatch(/^POST /);
    expect(JSON.parse(writes[0].slice('POST '.length))).toEqual({ base_path: '/srv/e2e-models', create_folders: true });
    await problems.settle();
  });

  test('the log viewer opens (no ComfyUI log on an external backend)', async ({ page, problems }) => {
    problems.allow({ url: '/api/comfy/validate-paths', status: 503 });
    await page.goto('/diagnostics');
    const viewer = page.locator('details[data-testid="log-viewer"]');
    await viewer.locator('summary').click();
    await expect(viewer).toHaveAttribute('open', '');
    await expect(viewer.getByTestId('log-lines')).toBeVisible();
    await expect(viewer.getByTestId('log-lines')).toContainText(/no log/i);
    await problems.settle();
  });
});

test('builder says v0 is not configured', async ({ page, problems }) => {
  await page.goto('/builder');
  await expect(page.getByTestId('builder-status')).toContainText(/not configured/i);
  await expect(page.getByTestId('builder-status')).toContainText(/v0/i);
  await expect(page.locator('form[data-testid="builder-form"] textarea[name="message"]')).toHaveCount(1);
  // Nothing can be sent without a key.
  await expect(page.getByTestId('builder-send')).toBeDisabled();
  await problems.settle();
});

test('home: the generation form switches between ComfyUI and FLUX fields', async ({ page, problems }) => {
  await page.goto('/');
  const form = page.locator('form[data-testid="generate-form"]');
  const backend = form.locator('select[name="backend"]');
  const values = await backend.locator('option').evaluateAll((all) => all.map((o) => (o as HTMLOptionElement).value));
  expect(values).toEqual(expect.arrayContaining(['comfy', 'flux']));

  await backend.selectOption('comfy');
  await expect(form.locator('select[name="template"]')).toBeVisible();
  await expect(form.locator('select[name="model"]')).toBeHidden();

  await backend.selectOption('flux');
  await expect(form.locator('select[name="model"]')).toBeVisible();
  await expect(form.locator('textarea[name="prompt"]')).toBeVisible();
  await expect(form.locator('select[name="template"]')).toBeHidden();

  await expect(page.getByTestId('status-strip')).toBeVisible();
  const progress = page.locator('progress[data-testid="ignite-progress"]');
  const value = await progress.evaluate((element) => (element as HTMLProgressElement).value);
  expect(value).toBeGreaterThanOrEqual(0);
  expect(value).toBeLessThanOrEqual(100);
  await expect(page.getByTestId('ignite-state')).toHaveAttribute('data-state', /^(idle|starting|waiting|online|error)$/);
  await problems.settle();
});

test('home: Start system with ComfyUI already running reports online at once', async ({ page, problems }) => {
  await page.goto('/');
  await problems.settle();
  await page.getByTestId('ignite-button').click();
  await expect(page.getByTestId('ignite-state')).toHaveAttribute('data-state', 'online', { timeout: 15_000 });
  await expect(page.locator('progress[data-testid="ignite-progress"]')).toHaveJSProperty('value', 100);
  await problems.settle();
});

// The i18n spec has run a job on this instance by now: the list shows whatever is there.
test('jobs: the list has its table and status filters', async ({ page, problems }) => {
  await page.goto('/jobs');
  await expect(page.locator('table[data-testid="jobs-table"]')).toHaveCount(1);
  await expect(page.getByTestId('jobs-filter').locator('a').first()).toBeVisible();
  for (const href of await page.getByTestId('jobs-filter').locator('a').evaluateAll((all) => all.map((a) => a.getAttribute('href')))) {
    expect(href ?? '').toMatch(/^\/jobs/);
  }
  await problems.settle();
});
