// Direct API calls the tests use to put an instance in a known state (not what is under test).

import * as fs from 'node:fs';
import * as path from 'node:path';
import { expect, type APIRequestContext } from '@playwright/test';
import { REPO_ROOT } from './servers';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export async function serviceStatus(request: APIRequestContext, base: string): Promise<string> {
  const response = await request.get(`${base}/api/system/comfy/status`);
  expect(response.status(), await response.text()).toBe(200);
  return ((await response.json()) as { status: string }).status;
}

/** Stops the supervised ComfyUI if it runs, so Ignite has something to do. */
export async function ensureStopped(request: APIRequestContext, base: string): Promise<void> {
  if ((await serviceStatus(request, base)) === 'stopped') return;
  const response = await request.post(`${base}/api/system/comfy/stop`, { data: {} });
  expect(response.status(), await response.text()).toBeLessThan(300);
  const deadline = Date.now() + 20_000;
  while ((await serviceStatus(request, base)) !== 'stopped') {
    if (Date.now() > deadline) throw new Error('ComfyUI did not stop within 20 s');
    await sleep(200);
  }
}

/** Starts the supervised ComfyUI through the API (JSON answer, not events) unless it runs already. */
export async function ensureOnline(request: APIRequestContext, base: string): Promise<void> {
  if ((await serviceStatus(request, base)) === 'running') {
    const health = await request.get(`${base}/api/comfy/system_stats`);
    if (health.ok()) return;
  }
  const response = await request.post(`${base}/api/system/ignite`, { data: {}, timeout: 45_000 });
  expect(response.status(), await response.text()).toBe(200);
  const deadline = Date.now() + 30_000;
  while (!(await request.get(`${base}/api/comfy/system_stats`)).ok()) {
    if (Date.now() > deadline) throw new Error('ComfyUI is not reachable through the gateway after Ignite');
    await sleep(200);
  }
}

/** EmptyImage → ImageInvert → SaveImage: runs on the fake ComfyUI without any model file. */
export function noModelWorkflow(): unknown {
  return JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'tests', 'fixtures', 'comfyui', 'workflow_no_model.json'), 'utf8'));
}

export interface JobJson {
  id: string;
  status: string;
  progress: number;
  outputs: { name: string; url: string; content_type: string }[];
}

/** Submits the no-model workflow and waits until the job has finished. */
export async function runJob(request: APIRequestContext, base: string): Promise<JobJson> {
  const submitted = await request.post(`${base}/api/jobs`, { data: { workflow: noModelWorkflow() } });
  expect(submitted.status(), await submitted.text()).toBe(202);
  const { id } = (await submitted.json()) as { id: string };
  const deadline = Date.now() + 30_000;
  for (;;) {
    const response = await request.get(`${base}/api/jobs/${id}`);
    expect(response.status()).toBe(200);
    const job = (await response.json()) as JobJson;
    if (['succeeded', 'failed', 'cancelled', 'error'].includes(job.status)) {
      expect(job.status).toBe('succeeded');
      return job;
    }
    if (Date.now() > deadline) throw new Error(`job ${id} still ${job.status} after 30 s`);
    await sleep(200);
  }
}
