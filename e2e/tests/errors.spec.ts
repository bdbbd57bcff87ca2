// The HTML error pages: 404 for an unknown page, 500 when a handler panics (the testkit build's
// /__testkit/panic). Both link back home.

import { test, expect } from '../harness/fixtures';

test('an unknown page answers 404 with the error page', async ({ page, problems }) => {
  problems.allow({ url: '/no-such-page', status: 404 });
  const response = await page.goto('/no-such-page');
  expect(response!.status()).toBe(404);
  expect(response!.headers()['content-type']).toContain('text/html');
  await expect(page.locator('html')).toHaveAttribute('lang', 'en');
  await expect(page.locator('main[data-page="error"]')).toBeVisible();
  await expect(page.getByTestId('error-code')).toContainText('404');
  const home = page.getByTestId('error-home');
  await expect(home).toHaveAttribute('href', '/');
  await problems.settle();

  await home.click();
  await expect(page).toHaveURL(/\/$/);
  await expect(page.locator('main[data-page="home"]')).toBeVisible();
});

test('an unknown page is in Russian too', async ({ page, baseURL, problems }) => {
  problems.allow({ url: '/no-such-page', status: 404 });
  await page.context().addCookies([{ name: 'lang', value: 'ru', url: baseURL! }]);
  const response = await page.goto('/no-such-page');
  expect(response!.status()).toBe(404);
  await expect(page.locator('html')).toHaveAttribute('lang', 'ru');
  await expect(page.getByTestId('error-code')).toContainText('404');
  await expect(page.locator('main')).toContainText(/[А-Яа-яЁё]/);
  await problems.settle();
});

test('an unknown job answers 404 with the error page', async ({ page, problems }) => {
  const path = '/jobs/00000000-0000-7000-8000-000000000000';
  problems.allow({ url: path, status: 404 });
  const response = await page.goto(path);
  expect(response!.status()).toBe(404);
  await expect(page.locator('main[data-page="error"]')).toBeVisible();
  await expect(page.getByTestId('error-code')).toContainText('404');
  await expect(page.getByTestId('error-home')).toHaveAttribute('href', '/');
  await problems.settle();
});

test('a panicking handler answers 500 with the error page', async ({ page, problems }) => {
  problems.allow({ url: '/__testkit/panic', status: 500 });
  const response = await page.goto('/__testkit/panic');
  expect(response!.status()).toBe(500);
  expect(response!.headers()['content-type']).toContain('text/html');
  await expect(page.locator('main[data-page="error"]')).toBeVisible();
  await expect(page.getByTestId('error-code')).toContainText('500');
  await expect(page.getByTestId('error-home')).toHaveAttribute('href', '/');
  await problems.settle();

  // The server survived the panic.
  const again = await page.goto('/');
  expect(again!.status()).toBe(200);
  await expect(page.locator('main[data-page="home"]')).toBeVisible();
});

test('an unknown API path still answers JSON', async ({ request }) => {
  const response = await request.get('/api/no-such-endpoint');
  expect(response.status()).toBe(404);
  expect(response.headers()['content-type']).toContain('application/json');
});
