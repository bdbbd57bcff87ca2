// The generation form reads like the task, in both languages: the template's parameters in their groups, in order
// (main, size, sampling, then the folded advanced ones), under translated labels with help; a size preset fills
// width and height; the dice draws a seed; with ComfyUI offline the model pickers say so instead of offering the
// template's defaults as if they were there.

import type { Page } from '@playwright/test';
import { test, expect, setLangCookie, type Lang } from '../harness/fixtures';
import { ensureStopped } from '../harness/api';

const LABELS: Record<Lang, Record<string, string>> = {
  en: { prompt: 'Prompt', negative: 'Negative prompt', width: 'Width', steps: 'Steps', seed: 'Seed', filename_prefix: 'File name prefix' },
  ru: { prompt: 'Промпт', negative: 'Негативный промпт', width: 'Ширина', steps: 'Шаги', seed: 'Сид', filename_prefix: 'Префикс имени файла' },
};
const GROUP_TITLES: Record<Lang, string[]> = {
  en: ['Main', 'Size', 'Sampling', 'Advanced'],
  ru: ['Основное', 'Размер', 'Сэмплирование', 'Дополнительно'],
};
const OFFLINE: Record<Lang, string> = {
  en: 'ComfyUI is offline — start it to see its models',
  ru: 'ComfyUI не запущен — запустите его, чтобы увидеть модели',
};

async function openForm(page: Page, base: string, lang: Lang, template: string) {
  await setLangCookie(page, base, lang);
  await page.goto(`${base}/`);
  const form = page.locator('form[data-testid="generate-form"]');
  await form.locator('select[name="template"]').selectOption(template);
  return form;
}

for (const lang of ['en', 'ru'] as Lang[]) {
  test(`the form shows its groups in order with translated labels, presets and a dice (${lang})`, async ({ page, baseURL, problems }) => {
    const form = await openForm(page, baseURL!, lang, 'sdxl-t2i');
    const groups = form.locator('.template-fields .group');
    await expect(groups).toHaveCount(4);
    expect(await groups.evaluateAll((nodes) => nodes.map((n) => (n as HTMLElement).dataset.group))).toEqual(['main', 'size', 'sampling', 'advanced']);
    expect(await groups.evaluateAll((nodes) => nodes.map((n) => n.querySelector('legend, summary')!.textContent))).toEqual(GROUP_TITLES[lang]);
    // Within main: the prompt, then the negative prompt, first of all.
    const mainParams = await form.locator('[data-group="main"] [data-param]').evaluateAll((nodes) => nodes.map((n) => (n as HTMLElement).dataset.param));
    expect(mainParams.slice(0, 2)).toEqual(['prompt', 'negative']);
    for (const [param, label] of Object.entries(LABELS[lang])) {
      await expect(form.locator(`[data-param="${param}"] .label-text`)).toHaveText(label);
    }
    await expect(form.locator('[data-param="steps"] .help')).toHaveText(lang === 'ru' ? 'Число шагов сэмплирования.' : 'Number of sampling steps.');
    // The advanced ones are folded until opened.
    const advanced = form.locator('details[data-group="advanced"]');
    await expect(advanced).not.toHaveAttribute('open', '');
    await expect(form.locator('[data-param="filename_prefix"] textarea')).toBeHidden();
    await advanced.locator('summary').click();
    await expect(form.locator('[data-param="filename_prefix"] textarea')).toBeVisible();

    const preset = form.getByTestId('size-preset');
    await preset.selectOption('1152x896');
    await expect(form.locator('[name="p.width"]')).toHaveValue('1152');
    await expect(form.locator('[name="p.height"]')).toHaveValue('896');
    await form.locator('[name="p.width"]').fill('1000');
    await expect(preset).toHaveValue('');

    const seed = form.locator('[name="p.seed"]');
    const before = await seed.inputValue();
    let drawn = before;
    for (let i = 0; i < 5 && drawn === before; i++) {
      await form.getByTestId('seed-dice').click();
      drawn = await seed.inputValue();
    }
    expect(drawn).not.toBe(before);
    expect(Number(drawn)).toBeGreaterThanOrEqual(0);
    await problems.settle();
  });

  test(`with ComfyUI offline the model pickers say so (${lang})`, async ({ page, request, igniteURL, problems }) => {
    await ensureStopped(request, igniteURL);
    const form = await openForm(page, igniteURL, lang, 'sd35-t2i');
    for (const param of ['checkpoint', 'clip_l', 'clip_g', 't5xxl']) {
      const picker = form.locator(`[data-param="${param}"] select`);
      await expect(picker).toBeDisabled();
      await expect(picker.locator('option')).toHaveText([OFFLINE[lang]]);
    }
    await problems.settle();
  });
}
