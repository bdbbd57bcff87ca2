// Starts the servers once for the whole run (the tests run in one worker, one after another) and returns the
// teardown that stops them. Their addresses reach the worker through the ORCH_E2E_INSTANCES variable.

import type { FullConfig } from '@playwright/test';
import { Servers, STATE_ENV } from './harness/servers';

export default async function globalSetup(_config: FullConfig): Promise<() => Promise<void>> {
  const servers = new Servers();
  // If the runner dies without running the teardown, take the servers down with it.
  const onExit = () => servers.killAllNow();
  process.once('exit', onExit);
  try {
    const instances = await servers.startAll();
    process.env[STATE_ENV] = JSON.stringify(instances);
    console.log(`[e2e] online: ${instances.online.url} (ComfyUI ${instances.online.comfyUrl})`);
    console.log(`[e2e] ignite: ${instances.ignite.url} (ComfyUI ${instances.ignite.comfyUrl}, supervised)`);
  } catch (error) {
    await servers.stopAll();
    process.removeListener('exit', onExit);
    throw error;
  }
  return async () => {
    await servers.stopAll();
    process.removeListener('exit', onExit);
  };
}
