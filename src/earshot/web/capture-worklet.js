// earshot capture worklet: turns the microphone's 128-frame render quanta into 20 ms frames
// of little-endian int16 (what the server archives bit-exact), posted to the main thread.
// Conversion matches the server's f32 → s16 rule: round(x * 32768), saturated.
// With processorOptions.probe (a Call made with `probe: true`), each burst's onset is also
// posted as {type: "probe", time, peak} (probe.js): for the latency benchmark.

import { OnsetProbe, blockTime } from "./probe.js";

class EarshotCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const ms = (options && options.processorOptions && options.processorOptions.frameMs) || 20;
    this.size = Math.max(1, Math.round(sampleRate * ms / 1000));
    this.frame = new Int16Array(this.size);
    this.fill = 0;
    this.running = true;
    this.probe = options && options.processorOptions && options.processorOptions.probe
      ? new OnsetProbe() : null;
    this.port.onmessage = (e) => {
      if (e.data === "stop") {
        if (this.fill > 0) this.flush(this.fill);
        this.running = false;
        this.port.postMessage("end"); // nothing more will come
      }
    };
  }

  flush(n) {
    const out = n === this.size ? this.frame : this.frame.slice(0, n);
    this.port.postMessage(out.buffer, [out.buffer]);
    this.frame = new Int16Array(this.size);
    this.fill = 0;
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const ch = input[0];  // mono: the page asks getUserMedia for one channel
    if (this.probe) {
      const o = this.probe.feed(ch);
      if (o) this.port.postMessage({ type: "probe", peak: o.peak,
                                     time: blockTime(o.index, ch.length, sampleRate, -1) });
    }
    for (let i = 0; i < ch.length; i++) {
      let v = Math.round(ch[i] * 32768);
      if (v > 32767) v = 32767; else if (v < -32768) v = -32768; else if (v !== v) v = 0;
      this.frame[this.fill++] = v;
      if (this.fill === this.size) this.flush(this.size);
    }
    return true;
  }
}

registerProcessor("earshot-capture", EarshotCapture);
