// The HTML error pages: 404 for an unknown page or job, in the visitor's language, linking back home. (The 500
// page a panicking handler gets is checked by `ui`'s unit tests: the shipped binary has no route that panics.)

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

test('an unknown API path still answers JSON', async ({ request }) => {
  const response = await request.get('/api/no-such-endpoint');
  expect(response.status()).toBe(404);
  expect(response.headers()['content-type']).toContain('application/json');
});
