// Screenshot comparisons of the main pages (English, 1280x800, "online" instance). Runs first (files run in
// alphabetical order in the single worker) so the instance is as fresh as when the baselines were made.
// Values that change between runs are masked: everything the pages mark with `data-dynamic`, and whatever shows
// this run's ports or temporary folders.
//
// Baselines: e2e/tests/__screenshots__/*.png; update with `npx playwright test 00-visual --update-snapshots=all`.
// The README's screenshots are not these: scripts/screenshots.sh makes them from a real run.

import type { Locator, Page } from '@playwright/test';
import { test, expect } from '../harness/fixtures';
import type { Instances } from '../harness/servers';

const SHOTS = [
  { path: '/', name: 'home' },
  { path: '/diagnostics', name: 'diagnostics' },
  { path: '/builder', name: 'builder' },
  { path: '/settings', name: 'settings' },
];

function dynamicParts(page: Page, instances: Instances): Locator[] {
  const { online } = instances;
  return [
    page.locator('[data-dynamic]'),
    page.getByText(`:${online.port}`),
    page.getByText(`:${online.comfyPort}`),
    page.getByText(`:${new URL(online.editorUrl).port}`),
    page.getByText(online.dataDir),
    page.getByText('orch-e2e-online-'),
  ];
}

for (const shot of SHOTS) {
  test(`${shot.name} looks as in its baseline`, async ({ page, instances, problems }) => {
    problems.allow({ url: '/api/comfy/validate-paths', status: 503 });
    await page.setViewportSize({ width: 1280, height: 800 });
    await page.goto(shot.path);
    await expect(page.locator('html')).toHaveAttribute('lang', 'en');
    await problems.settle();
    await page.evaluate(() => document.fonts.ready.then(() => undefined));
    await expect(page).toHaveScreenshot(`${shot.name}.png`, {
      maxDiffPixelRatio: 0.02,
      mask: dynamicParts(page, instances),
      // A quiet grey rather than magenta: the baselines double as the README's screenshots.
      maskColor: '#d5d9df',
      animations: 'disabled',
    });
  });
}
