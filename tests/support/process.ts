import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { reaped } from './children.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** Absolute, so a child started in another working directory still finds the loader. */
const TSX = import.meta.resolve('tsx');

/** The gateway as a real child process (`node --import tsx src/main.ts`), its output captured. */
export class GatewayProcess {
  output = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  port = 0;

  private constructor(readonly proc: ChildProcess) {
    proc.stdout?.on('data', (d: Buffer) => (this.output += d.toString()));
    proc.stderr?.on('data', (d: Buffer) => (this.output += d.toString()));
    this.exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  }

  /** Spawns with exactly `env` (plus PATH/HOME) so the machine's own settings never leak in. */
  static spawn(env: Record<string, string>, cwd = ROOT, nodeArgs: string[] = []): GatewayProcess {
    const proc = reaped(spawn(process.execPath, [...nodeArgs, '--import', TSX, `${ROOT}/src/main.ts`], {
      cwd,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    }));
    return new GatewayProcess(proc);
  }

  /** Resolves with the port once the gateway logs that it listens. */
  async listening(timeoutMs = 30_000): Promise<number> {
    const until = Date.now() + timeoutMs;
    while (Date.now() < until) {
      const m = /"port":(\d+)[^\n]*"msg":"gateway listening"/.exec(this.output);
      if (m) return (this.port = Number(m[1]));
      if (this.proc.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error(`gateway did not start:\n${this.output}`);
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  get httpUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    this.proc.kill(signal);
  }

  async stop(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill('SIGKILL');
    await this.exited;
  }
}
