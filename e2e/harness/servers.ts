// Starts and stops the processes the browser tests run against: a fake ComfyUI and two Orchestrator instances,
// each on a port chosen at run time and in a data folder of its own.
//
// "online": fake-comfyui started here, Orchestrator with SERVICE_BACKEND=external pointing at it.
// "ignite": Orchestrator with SERVICE_BACKEND=supervised, which starts fake-comfyui itself (after a 1.5 s start-up
//           delay) when the page's "Start system" button is pressed; nothing listens on its ComfyUI port before.
//
// Every process gets a cleared environment (PATH and HOME only, plus what is listed here) and runs with its data
// folder as working directory, so neither the developer's variables nor a `.env` in the repository leak in.

import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

export const REPO_ROOT = path.resolve(__dirname, '..', '..');
export const E2E_ROOT = path.resolve(__dirname, '..');

/** What the tests need to know about the running servers; passed to the workers as JSON in an env variable. */
export interface Instance {
  url: string;
  port: number;
  /** ComfyUI's editor on its own origin (ORCH_COMFY_BIND). */
  editorUrl: string;
  comfyUrl: string;
  comfyPort: number;
  dataDir: string;
}

export interface Instances {
  online: Instance;
  ignite: Instance;
}

export const STATE_ENV = 'ORCH_E2E_INSTANCES';

export function readInstances(): Instances {
  const raw = process.env[STATE_ENV];
  if (!raw) {
    throw new Error(`${STATE_ENV} is not set: the servers are started by the global setup (run "npx playwright test")`);
  }
  return JSON.parse(raw) as Instances;
}

interface Managed {
  name: string;
  child: ChildProcess;
  logFile: string;
  exited: Promise<void>;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
}

function binDir(): string {
  return process.env.ORCH_BIN_DIR ? path.resolve(process.env.ORCH_BIN_DIR) : path.join(REPO_ROOT, 'target', 'debug');
}

export function binaries(): { orchestrator: string; fakeComfy: string } {
  const dir = binDir();
  const orchestrator = path.join(dir, 'orchestrator');
  const fakeComfy = path.join(dir, 'fake-comfyui');
  for (const bin of [orchestrator, fakeComfy]) {
    if (!fs.existsSync(bin)) {
      throw new Error(`${bin} is missing: build it first with "cargo build --features testkit --bins"`);
    }
  }
  return { orchestrator, fakeComfy };
}

/** A port nothing listens on right now (the kernel's pick); distinct from the ones already handed out. */
export async function freePort(taken: Set<number>): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = net.createServer();
      server.unref();
      server.on('error', reject);
      server.listen(0, '127.0.0.1', () => {
        const address = server.address();
        const port = typeof address === 'object' && address ? address.port : 0;
        server.close(() => resolve(port));
      });
    });
    if (port && !taken.has(port)) {
      taken.add(port);
      return port;
    }
  }
  throw new Error('no free port found');
}

function baseEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
    HOME: process.env.HOME ?? os.homedir(),
  };
  return { ...env, ...extra };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function tail(file: string, lines = 40): string {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

function spawnManaged(name: string, command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv): Managed {
  const logFile = path.join(cwd, `${name}.log`);
  const fd = fs.openSync(logFile, 'a');
  const child = spawn(command, args, { cwd, env, stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  const managed: Managed = {
    name,
    child,
    logFile,
    exitCode: null,
    signal: null,
    exited: new Promise<void>((resolve) => {
      child.once('exit', (code, signal) => {
        managed.exitCode = code;
        managed.signal = signal;
        resolve();
      });
      child.once('error', (error) => {
        fs.appendFileSync(logFile, `\n[e2e] cannot start ${command}: ${error.message}\n`);
        resolve();
      });
    }),
  };
  return managed;
}

/** Polls `url` until it answers 200; fails early if the process died. */
async function waitForHttp(managed: Managed, url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    if (managed.child.exitCode !== null || managed.child.signalCode !== null || managed.exitCode !== null) {
      throw new Error(`${managed.name} exited (code ${managed.child.exitCode}) before answering ${url}:\n${tail(managed.logFile)}`);
    }
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
      if (response.status === 200) return;
      last = `status ${response.status}`;
    } catch (error) {
      last = String(error);
    }
    await sleep(100);
  }
  throw new Error(`${managed.name} did not answer ${url} within ${timeoutMs} ms (${last}):\n${tail(managed.logFile)}`);
}

/** SIGTERM, then SIGKILL after a grace period of 10 s. */
async function stopManaged(managed: Managed): Promise<void> {
  if (managed.child.exitCode !== null || managed.child.signalCode !== null) return;
  managed.child.kill('SIGTERM');
  const stopped = await Promise.race([managed.exited.then(() => true), sleep(10_000).then(() => false)]);
  if (!stopped) {
    console.warn(`[e2e] ${managed.name} (pid ${managed.child.pid}) ignored SIGTERM for 10 s: killing it`);
    managed.child.kill('SIGKILL');
    await managed.exited;
  }
}

const LOGS_DIR = path.join(E2E_ROOT, 'server-logs');

export class Servers {
  private readonly processes: Managed[] = [];
  private readonly dirs: string[] = [];
  instances?: Instances;

  private start(name: string, command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv): Managed {
    const managed = spawnManaged(name, command, args, cwd, env);
    this.processes.push(managed);
    return managed;
  }

  private async assertNothingListens(port: number): Promise<void> {
    const open = await new Promise<boolean>((resolve) => {
      const socket = net.connect({ host: '127.0.0.1', port });
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) throw new Error(`something already listens on 127.0.0.1:${port}`);
  }

  async startAll(): Promise<Instances> {
    const { orchestrator, fakeComfy } = binaries();
    // This run's logs only (instances the specs start add theirs while it runs).
    fs.rmSync(LOGS_DIR, { recursive: true, force: true });
    fs.mkdirSync(LOGS_DIR, { recursive: true });
    const ports = new Set<number>();
    const [p1, o1, p2, o2] = [await freePort(ports), await freePort(ports), await freePort(ports), await freePort(ports)];
    // Every Orchestrator's editor listener on a port of its own (its default, 3001, would be shared).
    const [e1, e2] = [await freePort(ports), await freePort(ports)];
    const tmp1 = fs.mkdtempSync(path.join(os.tmpdir(), 'orch-e2e-online-'));
    const tmp2 = fs.mkdtempSync(path.join(os.tmpdir(), 'orch-e2e-ignite-'));
    this.dirs.push(tmp1, tmp2);

    const comfy1 = this.start('fake-comfyui-online', fakeComfy, [`127.0.0.1:${p1}`], tmp1, baseEnv({}));
    const online = this.start(
      'orchestrator-online',
      orchestrator,
      ['serve'],
      tmp1,
      baseEnv({
        ORCH_BIND: `127.0.0.1:${o1}`,
        ORCH_COMFY_BIND: `127.0.0.1:${e1}`,
        COMFY_URL: `http://127.0.0.1:${p1}`,
        SERVICE_BACKEND: 'external',
        DATA_DIR: tmp1,
        LOG_FORMAT: 'json',
        ALLOW_GENERATION: 'false',
      }),
    );
    const ignite = this.start(
      'orchestrator-ignite',
      orchestrator,
      ['serve'],
      tmp2,
      baseEnv({
        ORCH_BIND: `127.0.0.1:${o2}`,
        ORCH_COMFY_BIND: `127.0.0.1:${e2}`,
        COMFY_URL: `http://127.0.0.1:${p2}`,
        SERVICE_BACKEND: 'supervised',
        COMFY_COMMAND: JSON.stringify([fakeComfy, `127.0.0.1:${p2}`, '--startup-delay-ms', '1500']),
        IGNITE_TIMEOUT_SECS: '30',
        DATA_DIR: tmp2,
        LOG_FORMAT: 'json',
      }),
    );

    await Promise.all([
      waitForHttp(comfy1, `http://127.0.0.1:${p1}/system_stats`, 30_000),
      waitForHttp(online, `http://127.0.0.1:${o1}/api/health`, 60_000),
      waitForHttp(ignite, `http://127.0.0.1:${o2}/api/health`, 60_000),
    ]);
    await this.assertNothingListens(p2);

    this.instances = {
      online: {
        url: `http://127.0.0.1:${o1}`,
        port: o1,
        editorUrl: `http://127.0.0.1:${e1}`,
        comfyUrl: `http://127.0.0.1:${p1}`,
        comfyPort: p1,
        dataDir: tmp1,
      },
      ignite: {
        url: `http://127.0.0.1:${o2}`,
        port: o2,
        editorUrl: `http://127.0.0.1:${e2}`,
        comfyUrl: `http://127.0.0.1:${p2}`,
        comfyPort: p2,
        dataDir: tmp2,
      },
    };
    return this.instances;
  }

  /** SIGTERM (Orchestrator stops its supervised child on it), then SIGKILL after a grace period. */
  async stopAll(): Promise<void> {
    // Orchestrators first, so the supervised ComfyUI is stopped by its supervisor.
    const ordered = [...this.processes].sort((a, b) => Number(b.name.startsWith('orch')) - Number(a.name.startsWith('orch')));
    for (const managed of ordered) await stopManaged(managed);
    // The supervised fake-comfyui should be gone with its supervisor; if not, end it by its pid.
    if (this.instances) {
      for (const pid of findOwnFakeComfy(this.instances.ignite.comfyPort)) {
        console.warn(`[e2e] supervised fake-comfyui (pid ${pid}) outlived its supervisor: killing it`);
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
    this.keepLogs();
    if (!process.env.E2E_KEEP_DATA) {
      for (const dir of this.dirs) fs.rmSync(dir, { recursive: true, force: true });
    }
  }

  /** Last resort when the runner exits without the teardown (synchronous: usable from an 'exit' handler). */
  killAllNow(): void {
    for (const managed of this.processes) {
      if (managed.child.exitCode === null && managed.child.signalCode === null) {
        try {
          managed.child.kill('SIGKILL');
        } catch {
          // already gone
        }
      }
    }
    if (this.instances) {
      for (const pid of findOwnFakeComfy(this.instances.ignite.comfyPort)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  }

  /** Copies the servers' logs to e2e/server-logs/ (kept after the run, ignored by git). */
  private keepLogs(): void {
    for (const dir of this.dirs) {
      keepLogsOf(dir, path.basename(dir).startsWith('orch-e2e-online') ? 'online' : 'ignite');
    }
  }
}

/** Copies the logs of the instance in `dir` to e2e/server-logs/, each name prefixed with `kind`. */
function keepLogsOf(dir: string, kind: string): void {
  fs.mkdirSync(LOGS_DIR, { recursive: true });
  for (const name of fs.readdirSync(dir)) {
    if (name.endsWith('.log')) fs.copyFileSync(path.join(dir, name), path.join(LOGS_DIR, `${kind}-${name}`));
  }
  const logs = path.join(dir, 'logs');
  if (fs.existsSync(logs)) {
    for (const name of fs.readdirSync(logs)) {
      const file = path.join(logs, name);
      if (fs.statSync(file).isFile()) fs.copyFileSync(file, path.join(LOGS_DIR, `${kind}-data-logs-${name}`));
    }
  }
}

/**
 * One Orchestrator a spec starts for itself (in the test worker) when it needs settings the shared instances do
 * not have; it can be restarted on the same port with the same data folder, as a service manager would.
 */
export class OwnOrchestrator {
  private managed?: Managed;
  private runs = 0;

  private constructor(
    readonly name: string,
    readonly port: number,
    readonly dataDir: string,
    private readonly env: Record<string, string>,
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** ComfyUI's editor, on its own origin (ORCH_COMFY_BIND). */
  get editorUrl(): string {
    return `http://${this.env.ORCH_COMFY_BIND}`;
  }

  /**
   * Starts `orchestrator serve` with `env` (plus its bind address and data folder; the editor's listener on a free
   * port unless `env` sets ORCH_COMFY_BIND) and waits until it answers. `port`: one chosen before (a fake ComfyUI
   * started first must know it, to call Orchestrator's Comfy.org egress).
   */
  static async start(name: string, env: Record<string, string>, port?: number): Promise<OwnOrchestrator> {
    const taken = new Set<number>(port ? [port] : []);
    port ??= await freePort(taken);
    const editor = env.ORCH_COMFY_BIND ?? `127.0.0.1:${await freePort(taken)}`;
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `orch-e2e-${name}-`));
    const instance = new OwnOrchestrator(name, port, dataDir, { ...env, ORCH_COMFY_BIND: editor });
    await instance.run();
    return instance;
  }

  private static readonly running = new Set<Managed>();

  private async run(): Promise<void> {
    const { orchestrator } = binaries();
    if (OwnOrchestrator.running.size === 0) {
      // A worker that exits without the spec's teardown takes its own servers down with it.
      process.once('exit', () => {
        for (const managed of OwnOrchestrator.running) {
          if (managed.child.exitCode === null && managed.child.signalCode === null) managed.child.kill('SIGKILL');
        }
      });
    }
    this.runs += 1;
    const managed = spawnManaged(
      `orchestrator-${this.name}-run${this.runs}`,
      orchestrator,
      ['serve'],
      this.dataDir,
      baseEnv({ ...this.env, ORCH_BIND: `127.0.0.1:${this.port}`, DATA_DIR: this.dataDir, LOG_FORMAT: 'json' }),
    );
    this.managed = managed;
    OwnOrchestrator.running.add(managed);
    void managed.exited.then(() => OwnOrchestrator.running.delete(managed));
    await waitForHttp(managed, `${this.url}/api/health`, 60_000);
  }

  /** Stops it (SIGTERM) and starts it again: same port, same data, a new process. */
  async restart(): Promise<void> {
    if (this.managed) await stopManaged(this.managed);
    await this.run();
  }

  /** Stops it, keeps its logs in e2e/server-logs/ and removes its data folder (unless E2E_KEEP_DATA). */
  async stop(): Promise<void> {
    if (this.managed) await stopManaged(this.managed);
    keepLogsOf(this.dataDir, this.name);
    if (!process.env.E2E_KEEP_DATA) fs.rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** Pids of fake-comfyui processes of this user listening on our own, run-specific ComfyUI port. */
function findOwnFakeComfy(port: number): number[] {
  const pids: number[] = [];
  let entries: string[] = [];
  try {
    entries = fs.readdirSync('/proc');
  } catch {
    return pids;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const args = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (path.basename(args[0] ?? '') === 'fake-comfyui' && args.includes(`127.0.0.1:${port}`)) pids.push(Number(entry));
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return pids;
}

/** A fake ComfyUI a spec starts for itself, with extra arguments (e.g. `--comfy-api-base URL`). */
export class OwnFakeComfy {
  private constructor(
    readonly port: number,
    private readonly dir: string,
    private readonly managed: Managed,
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  static async start(name: string, args: string[]): Promise<OwnFakeComfy> {
    const { fakeComfy } = binaries();
    const port = await freePort(new Set());
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `orch-e2e-${name}-`));
    const managed = spawnManaged(`fake-comfyui-${name}`, fakeComfy, [`127.0.0.1:${port}`, ...args], dir, baseEnv({}));
    process.once('exit', () => {
      if (managed.child.exitCode === null && managed.child.signalCode === null) managed.child.kill('SIGKILL');
    });
    await waitForHttp(managed, `http://127.0.0.1:${port}/system_stats`, 30_000);
    return new OwnFakeComfy(port, dir, managed);
  }

  async stop(): Promise<void> {
    await stopManaged(this.managed);
    keepLogsOf(this.dir, path.basename(this.dir));
    if (!process.env.E2E_KEEP_DATA) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
