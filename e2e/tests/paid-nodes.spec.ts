// A workflow with a paid ComfyUI API node, posted to the gateway the way ComfyUI's editor posts it (with the
// signed-in user's Comfy.org key in extra_data), on an Orchestrator of this spec's own with generation allowed and
// a Comfy.org key of its own. The gateway refuses it (402) and keeps it as a job awaiting confirmation; the home
// page lists it with its price; one click opens the confirmation modal (the same one FLUX uses) with the paid node
// and the price; Confirm submits it, and the fake Comfy.org API (a server in this spec, where Orchestrator's
// Comfy.org egress forwards the fake ComfyUI's paid calls) is called once, with the server's key and never the
// editor's.

import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test, expect } from '../harness/fixtures';
import { OwnFakeComfy, OwnOrchestrator, freePort } from '../harness/servers';

const SERVER_KEY = 'e2e-comfy-org-key-of-the-server';
const EDITOR_KEY = 'e2e-comfy-org-key-of-the-editor';
const PROMPT = 'A paid harbour at dawn, e2e test';

const WORKFLOW = {
  '1': {
    class_type: 'FluxProUltraImageNode',
    inputs: { prompt: PROMPT, aspect_ratio: '16:9', prompt_upsampling: false, raw: false, seed: 5 },
  },
  '3': { class_type: 'SaveImage', inputs: { filename_prefix: 'e2e-paid', images: ['1', 0] } },
};

interface Call {
  path: string;
  key: string | undefined;
}

test.describe('a paid prompt refused at the gateway', () => {
  const calls: Call[] = [];
  let comfyOrg: http.Server;
  let comfy: OwnFakeComfy;
  let orchestrator: OwnOrchestrator;

  test.beforeAll(async () => {
    comfyOrg = http.createServer((request, response) => {
      calls.push({ path: request.url ?? '', key: request.headers['x-api-key'] as string | undefined });
      request.resume();
      response.setHeader('Content-Type', 'application/json');
      response.end(JSON.stringify({ id: `task-${calls.length}`, polling_url: '/poll', price: 0.06 }));
    });
    await new Promise<void>((resolve) => comfyOrg.listen(0, '127.0.0.1', resolve));
    const port = (comfyOrg.address() as AddressInfo).port;
    // ComfyUI's API nodes call Orchestrator's egress, which forwards to the Comfy.org stand-in with the server's key.
    const orchestratorPort = await freePort(new Set());
    comfy = await OwnFakeComfy.start('paid-nodes', ['--comfy-api-base', `http://127.0.0.1:${orchestratorPort}/api/comfy-org/`]);
    orchestrator = await OwnOrchestrator.start(
      'paid-nodes',
      {
        COMFY_URL: comfy.url,
        SERVICE_BACKEND: 'external',
        ALLOW_GENERATION: 'true',
        COMFY_ORG_API_KEY: SERVER_KEY,
        COMFY_ORG_API_BASE: `http://127.0.0.1:${port}`,
      },
      orchestratorPort,
    );
  });

  test.afterAll(async () => {
    await orchestrator?.stop();
    await comfy?.stop();
    await new Promise((resolve) => comfyOrg?.close(resolve));
  });

  test('shows up as awaiting confirmation with its price, and Confirm in the modal submits it', async ({ page, request, problems }) => {
    const refused = await request.post(`${orchestrator.url}/api/comfy/prompt`, {
      data: { prompt: WORKFLOW, client_id: 'editor', extra_data: { api_key_comfy_org: EDITOR_KEY } },
      headers: { 'user-agent': 'e2e-editor/1.0' },
    });
    expect(refused.status()).toBe(402);
    const body = (await refused.json()) as { error: { type: string; details: { jobId: string } } };
    expect(body.error.type).toBe('confirmation_required');
    const id = body.error.details.jobId;
    expect(calls, 'nothing was sent to Comfy.org').toHaveLength(0);

    // The first click asks the server for the dry run: its 402 carries the price and a token.
    problems.allow({ method: 'POST', url: `/api/jobs/${id}/confirm`, status: 402 });
    await page.goto(`${orchestrator.url}/`);
    const waiting = page.locator(`[data-testid="awaiting-job"][data-job="${id}"]`);
    await expect(waiting).toBeVisible();
    await expect(waiting.getByTestId('awaiting-cost')).toHaveText('$0.060');

    const priced = page.waitForResponse((r) => new URL(r.url()).pathname === `/api/jobs/${id}/confirm`);
    await waiting.getByTestId('confirm-job').click();
    expect((await priced).status()).toBe(402);
    const modal = page.locator('dialog[data-testid="flux-modal"]');
    await expect(modal).toBeVisible();
    await expect(modal.getByTestId('flux-cost')).toHaveText('$0.060');
    await expect(modal).toContainText('FluxProUltraImageNode');
    await expect(modal).toContainText(PROMPT);
    await expect(modal).toContainText('16:9');
    // Whoever approves sees where the prompt came from.
    await expect(modal.getByTestId('flux-source')).toHaveText("the panel's ComfyUI API · 127.0.0.1 · e2e-editor/1.0");
    expect(calls).toHaveLength(0);

    const confirmed = page.waitForResponse((r) => new URL(r.url()).pathname === `/api/jobs/${id}/confirm`);
    await modal.getByTestId('flux-confirm').click();
    const answer = await confirmed;
    expect(answer.status(), await answer.text()).toBe(202);
    await expect(modal).toBeHidden();
    await expect(page.getByTestId('generate-message')).toContainText(id);
    await expect(waiting).toHaveCount(0);

    await expect
      .poll(async () => ((await (await request.get(`${orchestrator.url}/api/jobs/${id}`)).json()) as { status: string }).status, {
        timeout: 20_000,
      })
      .toBe('succeeded');
    expect(calls).toEqual([{ path: '/proxy/bfl/flux-pro-1.1-ultra/generate', key: SERVER_KEY }]);
    // The home page shows the new picture before the test leaves it: one still loading would be cut off by the
    // navigation, a failed request.
    const shown = page.getByTestId('recent-outputs').locator(`img[src*="${id}"]`);
    await expect.poll(() => shown.evaluate((img: HTMLImageElement) => img.complete && img.naturalWidth > 0), { timeout: 20_000 }).toBe(true);
    await problems.settle();

    // The job page shows the estimate and what its call cost (the stand-in reports no figure: the call's estimate).
    await page.goto(`${orchestrator.url}/jobs/${id}`);
    await expect(page.getByTestId('job-estimated')).toHaveText('$0.060');
    await expect(page.getByTestId('job-actual')).toHaveText('$0.060');
    await problems.settle();
  });

  test('an open-ended run is confirmed with a cap, and its calls stop there', async ({ page, request, problems }) => {
    // FLUX Kontext [pro] once per image of a batch whose size comes through a link: six runs Orchestrator cannot
    // count before they happen.
    const fanned = {
      '1': { class_type: 'EmptyImage', inputs: { width: 64, height: 64, batch_size: ['9', 0], color: 0 } },
      '2': { class_type: 'RebatchImages', inputs: { images: ['1', 0], batch_size: 1 } },
      '3': {
        class_type: 'FluxKontextProImageNode',
        inputs: { prompt: 'each image', aspect_ratio: '1:1', guidance: 3, steps: 50, seed: 1, prompt_upsampling: false, input_image: ['2', 0] },
      },
      '4': { class_type: 'SaveImage', inputs: { filename_prefix: 'e2e-fan', images: ['3', 0] } },
      '9': { class_type: 'PrimitiveInt', inputs: { value: 6 } },
    };
    const before = calls.length;
    const refused = await request.post(`${orchestrator.url}/api/comfy/prompt`, {
      data: { prompt: fanned, client_id: 'editor' },
    });
    expect(refused.status()).toBe(402);
    const id = ((await refused.json()) as { error: { details: { jobId: string } } }).error.details.jobId;

    problems.allow({ method: 'POST', url: `/api/jobs/${id}/confirm`, status: 402 });
    await page.goto(`${orchestrator.url}/jobs/${id}`);
    await page.getByTestId('job-confirm').click();
    const modal = page.locator('dialog[data-testid="flux-modal"]');
    await expect(modal).toBeVisible();
    await expect(modal).toContainText('FluxKontextProImageNode');
    await expect(modal).toContainText('an open number of runs');
    await expect(modal.getByTestId('flux-cost')).toHaveText('≥ $0.040');
    // Two $0.04 calls fit under $0.10.
    await modal.getByTestId('flux-max').fill('0.10');
    const confirmed = page.waitForResponse(
      (r) => new URL(r.url()).pathname === `/api/jobs/${id}/confirm` && r.request().postData()?.includes('confirmToken') === true,
    );
    await modal.getByTestId('flux-confirm').click();
    expect((await confirmed).status()).toBe(202);
    await expect(modal).toBeHidden();
    await expect
      .poll(async () => ((await (await request.get(`${orchestrator.url}/api/jobs/${id}`)).json()) as { status: string }).status, {
        timeout: 20_000,
      })
      .toBe('failed');
    const job = (await (await request.get(`${orchestrator.url}/api/jobs/${id}`)).json()) as {
      error: { code: string };
      cost_usd: number;
    };
    expect(job.error.code).toBe('spend_cap_reached');
    expect(job.cost_usd).toBe(0.1);
    expect(calls.slice(before)).toEqual([
      { path: '/proxy/bfl/flux-kontext-pro/generate', key: SERVER_KEY },
      { path: '/proxy/bfl/flux-kontext-pro/generate', key: SERVER_KEY },
    ]);
    await problems.settle();
  });
});
