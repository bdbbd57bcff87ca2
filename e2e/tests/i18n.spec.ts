// Every page (a real job's page among them), in English and in Russian, loads without a console error or a
// failed request (the `problems` fixture checks that), has its test ids, the navigation, the right `<html lang>` and translated text. The
// language comes from the `lang` cookie, else from Accept-Language, else English.

import type { Page } from '@playwright/test';
import { test, expect, setLangCookie, type Lang } from '../harness/fixtures';
import { CYRILLIC, NAV_LINKS, PAGES, TEXT } from '../harness/pages';

interface Mode {
  name: string;
  expected: Lang;
  acceptLanguage?: string;
  cookie?: Lang;
}

const MODES: Mode[] = [
  { name: 'English by default', expected: 'en' },
  { name: 'Russian from Accept-Language', expected: 'ru', acceptLanguage: 'ru' },
  { name: 'Russian from the lang cookie', expected: 'ru', cookie: 'ru' },
  { name: 'English from the lang cookie over Accept-Language: ru', expected: 'en', acceptLanguage: 'ru', cookie: 'en' },
];

for (const mode of MODES) {
  test.describe(mode.name, () => {
    if (mode.acceptLanguage) {
      // Chromium sends the locale as the document's Accept-Language (the extra header covers the other requests).
      test.use({ locale: mode.acceptLanguage, extraHTTPHeaders: { 'Accept-Language': mode.acceptLanguage } });
    }

    for (const info of PAGES) {
      test(`${info.path} (${info.id})`, async ({ page, baseURL, problems, onlineJob }) => {
        if (mode.cookie) await setLangCookie(page, baseURL!, mode.cookie);
        const response = await page.goto(info.path.replace('{id}', onlineJob));
        expect(response, 'navigation response').not.toBeNull();
        expect(response!.status()).toBe(200);
        expect(response!.headers()['content-type']).toContain('text/html');
        expect(await response!.request().headerValue('accept-language')).toBe(mode.acceptLanguage ?? 'en-US');

        await expect(page.locator('html')).toHaveAttribute('lang', mode.expected);
        await expect(page.locator(`main[data-page="${info.id}"]`)).toBeVisible();
        for (const id of info.testIds) {
          await expect(page.getByTestId(id), `[data-testid=${id}]`).toHaveCount(1);
        }
        await expect(page.getByTestId('script-error')).toBeHidden();

        const nav = page.locator('nav[data-testid="nav"]');
        await expect(nav).toBeVisible();
        for (const href of NAV_LINKS) {
          await expect(nav.locator(`a[href="${href}"]`), `nav link to ${href}`).toHaveCount(1);
        }
        await expect(nav.locator('a[href="/diagnostics"]')).toContainText(TEXT[mode.expected].diagnostics);

        if (info.id === 'home') {
          await expect(page.getByTestId('ignite-button')).toContainText(TEXT[mode.expected].ignite);
        }
        if (info.id === 'settings') {
          await expect(page.getByTestId('lang-select')).toHaveValue(mode.expected);
        }
        if (info.id === 'job') {
          await expect(page.locator('h1')).toContainText(onlineJob);
          await expect(page.getByTestId('job-status')).toHaveText('succeeded');
          const image = page.getByTestId('job-outputs').locator(`img[src*="/api/jobs/${onlineJob}/outputs/"]`).first();
          await expect(image).toBeVisible();
          await expect.poll(() => image.evaluate((img) => (img as HTMLImageElement).naturalWidth)).toBeGreaterThan(0);
        }
        if (mode.expected === 'ru') {
          await expect(page.locator('main')).toContainText(CYRILLIC);
        } else {
          await expect(nav).not.toContainText(CYRILLIC);
          // The language menu names Russian in Russian: leave out menus, anything marked with its own language,
          // and values that are data rather than interface text.
          const text = await page.locator('main').evaluate((main) => {
            const copy = main.cloneNode(true) as HTMLElement;
            copy.querySelectorAll('select, option, [lang], [data-dynamic]').forEach((element) => element.remove());
            return copy.textContent ?? '';
          });
          expect(text).not.toMatch(CYRILLIC);
        }

        // Let the page's scripts do their first round of requests, so their errors are caught.
        await problems.settle();
      });
    }
  });
}

/** Makes every request of the page carry exactly this Accept-Language (the document's included). */
async function sendAcceptLanguage(page: Page, value: string): Promise<void> {
  await page.route('**/*', (route) => route.continue({ headers: { ...route.request().headers(), 'accept-language': value } }));
}

test.describe('language choice, edge cases', () => {
  test('a browser’s full Accept-Language header picks Russian', async ({ page, problems }) => {
    await sendAcceptLanguage(page, 'ru-RU,ru;q=0.9,en-US;q=0.8,en;q=0.7');
    await page.goto('/');
    await expect(page.locator('html')).toHaveAttribute('lang', 'ru');
    await expect(page.getByTestId('ignite-button')).toContainText(TEXT.ru.ignite);
    await problems.settle();
  });

  test('Russian preferred over English by quality picks Russian', async ({ page, problems }) => {
    await sendAcceptLanguage(page, 'de, en;q=0.5, ru;q=0.7');
    await page.goto('/builder');
    await expect(page.locator('html')).toHaveAttribute('lang', 'ru');
    await problems.settle();
  });

  test('only unsupported languages fall back to English', async ({ page, problems }) => {
    await sendAcceptLanguage(page, 'de-DE,de;q=0.9,fr;q=0.8');
    await page.goto('/');
    await expect(page.locator('html')).toHaveAttribute('lang', 'en');
    await expect(page.getByTestId('ignite-button')).toContainText(TEXT.en.ignite);
    await problems.settle();
  });

  test('an unknown lang cookie is ignored in favour of Accept-Language', async ({ page, baseURL, problems }) => {
    await sendAcceptLanguage(page, 'ru');
    await page.context().addCookies([{ name: 'lang', value: 'xx', url: baseURL! }]);
    await page.goto('/');
    await expect(page.locator('html')).toHaveAttribute('lang', 'ru');
    await problems.settle();
  });
});
