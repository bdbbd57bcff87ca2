// /settings: the configuration table, and the language menu that sets the `lang` cookie and reloads the page in
// that language (which then holds on every page).

import { test, expect } from '../harness/fixtures';
import { TEXT } from '../harness/pages';

test('the settings table lists the configuration with its sources', async ({ page, instances, problems }) => {
  await page.goto('/settings');
  const table = page.locator('table[data-testid="settings-table"]');
  await expect(table).toBeVisible();
  for (const key of ['ORCH_BIND', 'COMFY_URL', 'SERVICE_BACKEND', 'DATA_DIR', 'ALLOW_GENERATION']) {
    await expect(table.locator(`tr[data-key="${key}"]`), `row ${key}`).toHaveCount(1);
  }
  await expect(table.locator('tr[data-key="ORCH_BIND"]')).toContainText(`127.0.0.1:${instances.online.port}`);
  await expect(table.locator('tr[data-key="COMFY_URL"]')).toContainText(instances.online.comfyUrl);
  await expect(table.locator('tr[data-key="SERVICE_BACKEND"]')).toContainText('external');
  // DATABASE_URL is a secret (it may carry a password): masked.
  await expect(table.locator('tr[data-key="DATABASE_URL"]')).toContainText('***');
  // No secret is configured here; whatever the table shows for secret keys must not be a value from elsewhere.
  for (const key of ['BFL_API_KEY', 'V0_API_KEY', 'ORCHESTRATOR_TOKEN']) {
    const row = table.locator(`tr[data-key="${key}"]`);
    if ((await row.count()) > 0) await expect(row).not.toContainText(/[A-Za-z0-9]{20,}/);
  }
  await problems.settle();
});

test('switching the language in settings changes the page language', async ({ page, context, problems }) => {
  await page.goto('/settings');
  await expect(page.locator('html')).toHaveAttribute('lang', 'en');
  const select = page.getByTestId('lang-select');
  await expect(select).toHaveValue('en');

  await Promise.all([page.waitForEvent('load'), select.selectOption('ru')]);
  await expect(page.locator('html')).toHaveAttribute('lang', 'ru');
  await expect(page).toHaveURL(/\/settings$/);
  await expect(page.getByTestId('lang-select')).toHaveValue('ru');
  await expect(page.locator('nav[data-testid="nav"] a[href="/diagnostics"]')).toContainText(TEXT.ru.diagnostics);
  const cookie = (await context.cookies()).find((c) => c.name === 'lang');
  expect(cookie?.value).toBe('ru');
  await problems.settle();

  // The choice holds on the other pages.
  await page.locator('nav[data-testid="nav"] a[href="/"]').click();
  await expect(page.locator('main[data-page="home"]')).toBeVisible();
  await expect(page.locator('html')).toHaveAttribute('lang', 'ru');
  await expect(page.getByTestId('ignite-button')).toContainText(TEXT.ru.ignite);
  await problems.settle();

  // And back to English.
  await page.goto('/settings');
  await Promise.all([page.waitForEvent('load'), page.getByTestId('lang-select').selectOption('en')]);
  await expect(page.locator('html')).toHaveAttribute('lang', 'en');
  await expect(page.locator('nav[data-testid="nav"] a[href="/diagnostics"]')).toContainText(TEXT.en.diagnostics);
  expect((await context.cookies()).find((c) => c.name === 'lang')?.value).toBe('en');
  await problems.settle();
});
