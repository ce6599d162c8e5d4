// earshot player worklet: plays a live stream through the jitter buffer of `earshot listen`
// (jitter.js, the same decisions as src/earshot/jitter.py). The main thread posts 20 ms
// frames {offset, frames, data: Int16Array} as they arrive; each is pushed with the audio
// clock's time, and the render callback pops one frame per 20 ms of output: audio,
// silence for a concealed frame (lost, or a stretch to grow the delay), or silence while
// pre-buffering. The audio clock is the playout clock, so the output never stalls.
// With processorOptions.probe (a Call made with `probe: true`), each burst's onset in the
// output is also posted as {type: "probe", time, peak} (probe.js): for the latency benchmark.

import { JitterBuffer } from "./jitter.js";
import { OnsetProbe, blockTime } from "./probe.js";

class EarshotPlayer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.probe = options && options.processorOptions && options.processorOptions.probe
      ? new OnsetProbe() : null;
    this.jb = null;
    this.frame = 0;
    this.cur = null; // the frame being played (Int16Array, or null: silence)
    this.head = 0;
    this.ticks = 0;
    this.outFrames = 0; // samples output since the first start
    this.port.onmessage = (e) => {
      const m = e.data;
      if (m.type === "reset") { if (this.jb) this.jb.reset(); return; }
      if (!this.jb) {
        this.frame = m.frames;
        this.jb = new JitterBuffer(sampleRate, m.frames, m.options || {});
      }
      try {
        this.jb.push(m.offset, m.frames, m.data, currentTime);
      } catch (err) {
        this.port.postMessage({ type: "error", message: err.message });
      }
    };
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    if (!this.jb) { out.fill(0); return true; }
    for (let i = 0; i < out.length; i++) {
      if (!this.cur || this.head >= this.frame) this._next(currentTime + i / sampleRate);
      out[i] = this.cur ? this.cur[this.head] / 32768 : 0;
      this.head++;
    }
    if (++this.ticks % 50 === 0) this._report();
    if (this.probe) {
      const o = this.probe.feed(out);
      if (o) this.port.postMessage({ type: "probe", peak: o.peak,
                                     time: blockTime(o.index, out.length, sampleRate, 1) });
    }
    return true;
  }

  _next(now) {
    const p = this.jb.pop(now);
    this.cur = p.kind === "audio" ? p.payload : null;
    this.head = 0;
    if (p.kind !== "waiting") this.outFrames += this.frame;
    if (!this.cur) this.cur = this._silence || (this._silence = new Int16Array(this.frame));
  }

  _report() {
    const s = this.jb.stats;
    this.port.postMessage({
      type: "stats", received: s.received * this.frame, played: s.playedFrames * this.frame,
      output: this.outFrames, underruns: s.heldFrames, buffered: s.bufferedPackets * this.frame,
      delay: s.delay, targetDelay: s.targetDelay, concealedMs: s.concealedMs, late: s.late,
      lossRate: s.lossRate, duplicates: s.duplicates, acceleratedFrames: s.acceleratedFrames,
      started: this.jb.started,
    });
  }
}

registerProcessor("earshot-player", EarshotPlayer);
