// probe.js — onset probe for latency measurements (benchmarks/bench_calls_page.py), used
// by the capture and player worklets only when a Call is made with `probe: true`.
//
// A block of samples (a render quantum) is fed in; the probe answers the first sample of
// an onset: the first sample louder than `loud` in a block, once the signal has been
// quiet (a whole block under `quiet`) since the last onset. The same rule as
// benchmarks/bench_calls.py's speaker side, per block instead of per 20 ms frame.

export class OnsetProbe {
  constructor({ loud = 0.1, quiet = 0.01 } = {}) {
    this.loud = loud;
    this.quiet = quiet;
    this.armed = true;
  }

  /** `samples`: floats in [-1, 1]. Returns {index, peak} for an onset in this block (index:
   * its first loud sample; peak: the block's), or null. */
  feed(samples) {
    let peak = 0;
    let first = -1;
    for (let i = 0; i < samples.length; i++) {
      const a = Math.abs(samples[i]);
      if (a > peak) peak = a;
      if (first < 0 && a > this.loud) first = i;
    }
    if (first >= 0) {
      if (!this.armed) return null;
      this.armed = false;
      return { index: first, peak };
    }
    if (peak < this.quiet) this.armed = true;
    return null;
  }
}

/** Wall-clock time (ms since the epoch, Date.now()'s clock: the system's, comparable with
 * Python's time.time() on the same machine) of sample `index` of a block handed to a render
 * callback now; `sign` -1 for a microphone block (its samples were captured before the
 * callback, the last one just now), +1 for a speaker block (its samples play after it). */
export function blockTime(index, length, rate, sign) {
  const now = Date.now();
  return sign < 0 ? now - (length - index) * 1000 / rate : now + index * 1000 / rate;
}
