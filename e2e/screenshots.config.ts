import { defineConfig } from '@playwright/test';
import base from './playwright.config';

// The README's screenshots (scripts/screenshots.sh): a real run on servers of its own, not the masked baselines
// the visual tests compare against.
export default defineConfig({
  ...base,
  testDir: './screenshots',
  globalSetup: undefined,
  timeout: 240_000,
  use: { ...base.use, viewport: { width: 1280, height: 900 } },
});
