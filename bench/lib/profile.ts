/**
 * `npm run bench -- --profile`: V8's sampling profiler in every server instance during a
 * fan-out's measured window (started and stopped through the inspector the benchmark already
 * holds), each profile written to bench/results/profiles/ (open it in Chrome DevTools) and
 * summarised as the top frames by self time, as a share of the busy (non-idle) samples, and by
 * area (a package, a directory of `src/`, Node's own code, native). The
 * profiler adds its own cost: a profiled cell's CPU figures are not comparable with others'.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { execSync } from 'node:child_process';
import { GENERATOR_CORE, HAS_TASKSET, SERVER_CORE, inspect, ROOT, type Proc } from './procs.js';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
}
export interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface TopFrame {
  frame: string;
  pct: number;
}

/**
 * Self time per frame (function + file:line), in % of the samples that were not idle;
 * `(program)` is native time V8 cannot put under a JS frame (libuv, the event loop's own syscalls).
 */
export function topFrames(profile: CpuProfile, n = 20): { busyMs: number; frames: TopFrame[]; byArea: TopFrame[] } {
  const byId = new Map(profile.nodes.map((node) => [node.id, node.callFrame]));
  const self = new Map<string, number>();
  const area = new Map<string, number>();
  let busy = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const cf = byId.get(profile.samples[i]!);
    if (cf === undefined || cf.functionName === '(idle)') continue;
    const dt = profile.timeDeltas[i + 1] ?? 0;
    busy += dt;
    const key = `${cf.functionName || '(anonymous)'} ${shortUrl(cf.url)}${cf.url ? `:${cf.lineNumber + 1}` : ''}`;
    self.set(key, (self.get(key) ?? 0) + dt);
    const a = areaOf(cf);
    area.set(a, (area.get(a) ?? 0) + dt);
  }
  const ranked = (m: Map<string, number>, k: number) =>
    [...m]
      .sort((a, b) => b[1] - a[1])
      .slice(0, k)
      .map(([frame, t]) => ({ frame, pct: busy > 0 ? Math.round((1000 * t) / busy) / 10 : 0 }));
  return { busyMs: busy / 1000, frames: ranked(self, n), byArea: ranked(area, 12) };
}

function shortUrl(url: string): string {
  const nm = url.lastIndexOf('node_modules/');
  if (nm >= 0) return url.slice(nm + 'node_modules/'.length);
  const root = url.indexOf(ROOT);
  return root >= 0 ? url.slice(root + ROOT.length) : url.replace(/^file:\/\//, '');
}

/** Which part of the code a frame belongs to: a package, a directory of ours, Node's own, or V8's. */
function areaOf(cf: CallFrame): string {
  const url = cf.url;
  if (url === '') return cf.functionName.startsWith('(') ? cf.functionName : 'native (syscalls, V8 builtins)';
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (m) return m[1]!;
  if (url.startsWith('node:')) return 'node core';
  const src = /\/src\/([^/]+)\//.exec(url);
  return src ? `src/${src[1]}` : shortUrl(url);
}

/**
 * Profiles every instance while `run` runs; returns its result and one profile per instance.
 * V8 samples from a thread of its own: pinned to the main thread's core, it runs only when the
 * main thread yields, and busy stretches go unsampled. So, while profiling, only each main
 * thread stays on the server core and the process's other threads may use both.
 */
export async function profileWhile<T>(instances: Proc[], run: () => Promise<T>): Promise<{ result: T; profiles: CpuProfile[] }> {
  if (HAS_TASKSET) {
    for (const p of instances) {
      execSync(`taskset -a -p -c ${GENERATOR_CORE},${SERVER_CORE} ${p.pid} && taskset -p -c ${SERVER_CORE} ${p.pid}`, { stdio: 'ignore' });
    }
  }
  const urls = instances.map((p) => p.inspectorUrl!);
  let finish!: () => void;
  const done = new Promise<void>((r) => (finish = r));
  let started = 0;
  let allStarted!: () => void;
  const ready = new Promise<void>((r) => (allStarted = r));
  const sessions = urls.map((url) =>
    inspect(url, async (call) => {
      await call('Profiler.enable');
      await call('Profiler.setSamplingInterval', { interval: 200 });
      await call('Profiler.start');
      if (++started === urls.length) allStarted();
      await done;
      return ((await call('Profiler.stop')) as { profile: CpuProfile }).profile;
    }),
  );
  await Promise.race([ready, Promise.all(sessions)]);
  let result: T;
  try {
    result = await run();
  } finally {
    finish();
  }
  return { result, profiles: await Promise.all(sessions) };
}

/** Writes `profiles` to bench/results/profiles/<name>-<instance>.cpuprofile; returns the paths. */
export function saveProfiles(name: string, profiles: CpuProfile[]): string[] {
  const dir = `${ROOT}/bench/results/profiles`;
  mkdirSync(dir, { recursive: true });
  return profiles.map((p, i) => {
    const path = `${dir}/${name}-${i}.cpuprofile`;
    writeFileSync(path, JSON.stringify(p));
    return path.slice(ROOT.length);
  });
}
