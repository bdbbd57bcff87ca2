// The pages and the strings the tests know in both languages.

import type { Lang } from './fixtures';

export interface PageInfo {
  /** `{id}` stands for a real job's id (the `onlineJob` fixture's). */
  path: string;
  /** The `data-page` of its `<main>`. */
  id: 'home' | 'jobs' | 'job' | 'gallery' | 'builder' | 'diagnostics' | 'settings' | 'api-docs';
  /** Test ids that must be on the page. */
  testIds: string[];
}

export const PAGES: PageInfo[] = [
  { path: '/', id: 'home', testIds: ['status-strip', 'ignite-button', 'ignite-state', 'ignite-progress', 'generate-form', 'generate-submit', 'queue', 'recent-outputs'] },
  { path: '/jobs', id: 'jobs', testIds: ['jobs-filter', 'jobs-table'] },
  { path: '/jobs/{id}', id: 'job', testIds: ['job-status', 'job-progress', 'job-error', 'job-outputs'] },
  { path: '/gallery', id: 'gallery', testIds: ['gallery-filters', 'gallery-search', 'gallery-grid', 'gallery-more'] },
  { path: '/builder', id: 'builder', testIds: ['builder-messages', 'builder-form', 'builder-send', 'builder-status'] },
  {
    path: '/diagnostics',
    id: 'diagnostics',
    testIds: ['diag-services', 'diag-comfy', 'diag-models', 'diag-paths', 'diag-external', 'diag-database', 'diag-ignite', 'diag-rescan', 'diag-create-paths', 'log-viewer'],
  },
  { path: '/settings', id: 'settings', testIds: ['settings-table', 'lang-select'] },
  { path: '/api-docs', id: 'api-docs', testIds: ['openapi-link'] },
];

export const NAV_LINKS = ['/', '/jobs', '/gallery', '/builder', '/diagnostics', '/settings', '/api-docs'];

export const TEXT: Record<Lang, { diagnostics: string; ignite: string }> = {
  en: { diagnostics: 'Diagnostics', ignite: 'Start system' },
  ru: { diagnostics: 'Диагностика', ignite: 'Запуск системы' },
};

export const CYRILLIC = /[А-Яа-яЁё]/;
