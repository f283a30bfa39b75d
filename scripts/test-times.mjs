// A node:test reporter for scripts/run-tests.mjs: at the end, each file's wall time and when it
// started (from its top-level tests' durations), longest first — what to tune CI's order and
// concurrency by (the SECONDS table in run-tests.mjs).
export default async function* testTimes(source) {
  const started = new Map();
  const ended = new Map();
  for await (const event of source) {
    if ((event.type !== 'test:pass' && event.type !== 'test:fail') || event.data.nesting !== 0 || !event.data.file) continue;
    const now = Date.now();
    const { file } = event.data;
    started.set(file, Math.min(started.get(file) ?? Infinity, now - (event.data.details?.duration_ms ?? 0)));
    ended.set(file, Math.max(ended.get(file) ?? 0, now));
  }
  if (started.size === 0) return;
  const t0 = Math.min(...started.values());
  const rows = [...started.keys()].map((f) => ({ file: f.replace(/^.*?\btests\//, 'tests/'), s: (ended.get(f) - started.get(f)) / 1000, at: (started.get(f) - t0) / 1000 }));
  rows.sort((a, b) => b.s - a.s);
  yield `\nfile times (s, started at s):\n${rows.map((r) => `${r.s.toFixed(0).padStart(5)} ${r.at.toFixed(0).padStart(5)}  ${r.file}`).join('\n')}\n`;
}
