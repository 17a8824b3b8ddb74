// The reference's parent for flame-bench: calls `math`/`add` (MathService.add of the
// reference's e2e/services.ts) on RUNNER_URL through the reference's own pool and client, from
// CONCURRENCY loops at once, for WARMUP_MS and then DURATION_MS (at most MAX_REQUESTS calls),
// and prints one line `BENCH_RESULT {"ok":…,"errors":…,"elapsedMs":…,"p50Us":…,"p99Us":…}`.
// Copied by flame-bench into bench/ of a temporary copy of the reference.
import { flame } from "../src";
import { MathService } from "../e2e/services";

const secret = process.env.FLAME_SECRET || undefined;
const url = process.env.RUNNER_URL ?? "http://127.0.0.1:8080";
const concurrency = Number(process.env.CONCURRENCY ?? "32");
const warmupMs = Number(process.env.WARMUP_MS ?? "1000");
const durationMs = Number(process.env.DURATION_MS ?? "5000");
const maxRequests = Number(process.env.MAX_REQUESTS ?? "5000000");

await flame.configure({
  mode: "parent",
  ...(secret ? { security: { secret } } : {}),
  pools: { default: { runners: [{ url }], maxConcurrency: concurrency } }
});

const start = performance.now();
const measureFrom = start + warmupMs;
const end = measureFrom + durationMs;
const samples: number[] = [];
let errors = 0;
let firstError: string | undefined;
let sent = 0;

async function loop() {
  while (performance.now() < end && sent < maxRequests) {
    sent += 1;
    const t0 = performance.now();
    let ok = false;
    try {
      ok = (await MathService.add(2, 3)) === 5;
      if (!ok) firstError ??= "wrong result";
    } catch (error) {
      firstError ??= String(error);
    }
    const t1 = performance.now();
    if (t0 >= measureFrom && t1 <= end) {
      if (ok) samples.push(t1 - t0);
      else errors += 1;
    }
  }
}

await Promise.all(Array.from({ length: concurrency }, loop));
const elapsedMs = Math.min(performance.now(), end) - measureFrom;
samples.sort((a, b) => a - b);
const pct = (p: number) =>
  samples.length === 0 ? 0 : samples[Math.min(samples.length, Math.max(1, Math.ceil((p / 100) * samples.length))) - 1];
console.log(
  `BENCH_RESULT ${JSON.stringify({
    ok: samples.length,
    errors,
    elapsedMs,
    p50Us: Math.round(pct(50) * 1000),
    p99Us: Math.round(pct(99) * 1000),
    firstError: firstError ?? null
  })}`
);
await flame.shutdown();
process.exit(0);
