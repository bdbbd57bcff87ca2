// On the "ignite" instance (SERVICE_BACKEND=supervised, nothing running): the home page's "Start system" button
// starts ComfyUI and follows it to online; afterwards the log viewer shows ComfyUI's output and a job's page
// shows the job and its image.

import { test, expect } from '../harness/fixtures';
import { ensureOnline, ensureStopped, runJob, serviceStatus } from '../harness/api';

test('Start system reaches online with the progress bar full', async ({ page, request, igniteURL, instances }) => {
  test.setTimeout(90_000);
  await ensureStopped(request, igniteURL);

  const ignites: { method: string; accept: string }[] = [];
  page.on('request', (r) => {
    if (new URL(r.url()).pathname === '/api/system/ignite') ignites.push({ method: r.method(), accept: r.headers()['accept'] ?? '' });
  });

  await page.goto(`${igniteURL}/`);
  const button = page.getByTestId('ignite-button');
  const state = page.getByTestId('ignite-state');
  const progress = page.locator('progress[data-testid="ignite-progress"]');
  await expect(button).toBeEnabled();
  await expect(state).toHaveAttribute('data-state', /^(idle|starting|waiting|online|error)$/);
  await expect(state).not.toHaveAttribute('data-state', 'online');

  // Every value data-state takes, in order (the old value of each change, then the current one).
  await page.evaluate(() => {
    const read = () => document.querySelector('[data-testid="ignite-state"]')?.getAttribute('data-state') ?? '(none)';
    const seen: string[] = [read()];
    (window as unknown as { __igniteStates: string[] }).__igniteStates = seen;
    new MutationObserver((records) => {
      for (const record of records) {
        const target = record.target as Element;
        if (record.type === 'attributes' && target.getAttribute?.('data-testid') === 'ignite-state') seen.push(record.oldValue ?? '(none)');
      }
      seen.push(read());
    }).observe(document.documentElement, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-state'], attributeOldValue: true });
  });

  await button.click();
  await expect(state).toHaveAttribute('data-state', 'online', { timeout: 30_000 });
  await expect(progress).toHaveJSProperty('value', 100);

  const states = (await page.evaluate(() => (window as unknown as { __igniteStates: string[] }).__igniteStates)).filter(
    (value, index, all) => index === 0 || value !== all[index - 1],
  );
  test.info().annotations.push({ type: 'ignite states', description: states.join(' → ') });
  expect(states, `data-state went ${states.join(' → ')}`).not.toContain('error');
  const order = ['starting', 'waiting', 'online'].map((value) => states.indexOf(value));
  expect(order.every((index) => index >= 0), `data-state went ${states.join(' → ')}; expected starting → waiting → online`).toBe(true);
  expect(order[0] < order[1] && order[1] < order[2], `data-state went ${states.join(' → ')}`).toBe(true);

  expect(ignites).toHaveLength(1);
  expect(ignites[0].method).toBe('POST');
  expect(ignites[0].accept).toContain('text/event-stream');

  // ComfyUI really runs now.
  expect(await serviceStatus(request, igniteURL)).toBe('running');
  const stats = await request.get(`${instances.ignite.comfyUrl}/system_stats`);
  expect(stats.status()).toBe(200);
});

test('the log viewer shows ComfyUI output', async ({ page, request, igniteURL, problems }) => {
  test.setTimeout(90_000);
  await ensureOnline(request, igniteURL);
  await page.goto(`${igniteURL}/diagnostics`);
  const viewer = page.locator('details[data-testid="log-viewer"]');
  await viewer.locator('summary').click();
  await expect(viewer).toHaveAttribute('open', '');
  await expect(viewer.getByTestId('log-lines')).toContainText('Starting server', { timeout: 15_000 });
  await problems.settle();
});

test('a finished job shows on its page, in the jobs list and in recent outputs', async ({ page, request, igniteURL, problems }) => {
  test.setTimeout(90_000);
  await ensureOnline(request, igniteURL);
  const job = await runJob(request, igniteURL);
  expect(job.outputs.length).toBeGreaterThan(0);

  await page.goto(`${igniteURL}/jobs/${job.id}`);
  await expect(page.locator('main[data-page="job"]')).toBeVisible();
  await expect(page.getByTestId('job-status')).toContainText(/succeeded/i);
  const progress = page.getByTestId('job-progress');
  if ((await progress.evaluate((element) => element.tagName)) === 'PROGRESS') {
    await expect(progress).toHaveJSProperty('value', 100);
  } else {
    await expect(progress).toContainText('100');
  }
  const image = page.getByTestId('job-outputs').locator(`img[src*="/api/jobs/${job.id}/outputs/"]`).first();
  await expect(image).toBeVisible();
  await expect.poll(() => image.evaluate((img) => (img as HTMLImageElement).naturalWidth)).toBeGreaterThan(0);
  await problems.settle();

  await page.goto(`${igniteURL}/jobs`);
  const link = page.getByTestId('jobs-table').locator(`a[href="/jobs/${job.id}"]`).first();
  await expect(link).toBeVisible();
  await expect(page.getByTestId('jobs-filter').locator('a').first()).toBeVisible();
  // The status filters: the job is under "succeeded", not under "failed".
  await page.getByTestId('jobs-filter').locator('a[href="/jobs?status=succeeded"]').click();
  await expect(page).toHaveURL(`${igniteURL}/jobs?status=succeeded`);
  await expect(page.getByTestId('jobs-table').locator(`a[href="/jobs/${job.id}"]`).first()).toBeVisible();
  await page.getByTestId('jobs-filter').locator('a[href="/jobs?status=failed"]').click();
  await expect(page).toHaveURL(`${igniteURL}/jobs?status=failed`);
  await expect(page.getByTestId('jobs-table').locator(`a[href="/jobs/${job.id}"]`)).toHaveCount(0);
  await page.getByTestId('jobs-filter').locator('a[href="/jobs"]').click();
  await expect(page).toHaveURL(`${igniteURL}/jobs`);
  await problems.settle();

  await page.getByTestId('jobs-table').locator(`a[href="/jobs/${job.id}"]`).first().click();
  await expect(page).toHaveURL(`${igniteURL}/jobs/${job.id}`);
  await expect(page.locator('main[data-page="job"]')).toBeVisible();

  await page.goto(`${igniteURL}/`);
  const recent = page.getByTestId('recent-outputs');
  await expect(recent.locator(`[src*="${job.id}"], [href*="${job.id}"]`).first()).toBeVisible();
  await problems.settle();
});

test('Start system on the diagnostics page starts ComfyUI too', async ({ page, request, igniteURL, problems }) => {
  test.setTimeout(90_000);
  await ensureStopped(request, igniteURL);
  await page.goto(`${igniteURL}/diagnostics`);
  await expect(page.getByTestId('diag-services')).not.toContainText('running');
  const button = page.getByTestId('diag-ignite');
  await button.click();
  await expect(button).toBeDisabled();
  await expect(button).toBeEnabled({ timeout: 30_000 });
  await expect(page.getByTestId('diag-services')).toContainText('running', { timeout: 15_000 });
  await expect(page.getByTestId('diag-comfy')).toContainText('0.3.64');
  expect(await serviceStatus(request, igniteURL)).toBe('running');
  await problems.settle();
});
