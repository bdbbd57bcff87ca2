// The script-error banner: hidden while all is well, shown when a page script throws or a promise is rejected
// without a handler.

import { test, expect } from '../harness/fixtures';

test('an uncaught exception shows the script-error banner', async ({ page, problems }) => {
  problems.allowPageError(/e2e: thrown on purpose/);
  await page.goto('/jobs');
  const banner = page.getByTestId('script-error');
  await expect(banner).toBeHidden();
  await page.evaluate(() => {
    setTimeout(() => {
      throw new Error('e2e: thrown on purpose');
    }, 0);
  });
  await expect(banner).toBeVisible();
});

test('an unhandled rejection shows the script-error banner', async ({ page, problems }) => {
  problems.allowPageError(/e2e: rejected on purpose/);
  await page.goto('/builder');
  const banner = page.getByTestId('script-error');
  await expect(banner).toBeHidden();
  await page.evaluate(() => {
    void Promise.reject(new Error('e2e: rejected on purpose'));
  });
  await expect(banner).toBeVisible();
});
