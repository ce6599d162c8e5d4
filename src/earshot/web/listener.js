// listener.js — hear a live stream in the page, with the jitter buffer of `earshot listen`.
//
//   const l = new Listener(streamId, { server, token });
//   l.addEventListener("stats", (e) => console.log(e.detail.delay));
//   await l.start();  ...  l.stop();
//
// Subscribes to the stream's audio (16-bit PCM), re-frames the relay's batches into 20 ms
// frames by offset (a gap starts a new run; the buffer conceals what is missing), and plays
// them through player-worklet.js, where the audio clock pops one frame every 20 ms.
// Events: "stats" ({received, played, output, underruns, buffered} in samples; delay,
// targetDelay in seconds; concealedMs, late, lossRate), "ended", "error". `end` is the
// stream offset just past the last sample received.

import { defaultServer, emit } from "./common.js";
import { Subscription } from "./subscribe.js";

const PLAYER_WORKLET = new URL("./player-worklet.js", import.meta.url);

export class Listener extends EventTarget {
  constructor(stream, options = {}) {
    super();
    this.streamId = stream;
    this.server = options.server || defaultServer();
    this.token = options.token || null;
    this.frameMs = options.frameMs || 20;
    this.jitter = options.jitter || {}; // JitterBuffer options (minDelay, maxDelay, ...)
    this.stats = { received: 0, played: 0, output: 0, underruns: 0, buffered: 0 };
    this.context = null;
    this.node = null;
    this._opening = null;
    this._pending = null; // Int16Array not yet a whole frame
    this._pendingOffset = 0;
    this._frame = 0;
    this.end = 0; // stream offset just past the last sample received
  }

  async start() {
    this.sub = new Subscription({
      server: this.server, stream: this.streamId, audio: "s16", token: this.token,
      onevent: (msg) => this._event(msg),
      onaudio: (header, payload) => this._audio(header, payload),
    });
  }

  _event(msg) {
    if (msg.type === "stream_ended" && msg.stream === this.streamId) {
      this._flush();
      emit(this, "ended", msg);
    } else if (msg.type === "error" && !msg.stream) {
      emit(this, "error", msg);
    } else if (msg.type === "subscribed" && !msg.live.some((s) => s.stream === this.streamId)) {
      emit(this, "error", { code: "not_live", message: `stream ${this.streamId} is not live` });
    }
  }

  _audio(h, payload) {
    if (!this.context) this._opening = this._open(h.rate);
    let x = new Int16Array(payload);
    if (h.channels > 1) x = downmix(x, h.channels);
    this._frame = this._frame || Math.round(h.rate * this.frameMs / 1000);
    const offset = h.offset;
    this.end = Math.max(this.end, offset + x.length);
    if (!this._pending || offset !== this._pendingOffset + this._pending.length) {
      this._pending = x; // the start, or after a gap
      this._pendingOffset = offset;
    } else {
      const joined = new Int16Array(this._pending.length + x.length);
      joined.set(this._pending);
      joined.set(x, this._pending.length);
      this._pending = joined;
    }
    const f = this._frame;
    let at = 0;
    while (this._pending.length - at >= f) {
      this._post(this._pendingOffset, this._pending.slice(at, at + f));
      at += f;
      this._pendingOffset += f;
    }
    this._pending = this._pending.slice(at);
  }

  _flush() { // the stream's last partial frame, padded with silence: nothing is cut off
    if (!this._pending || !this._pending.length) return;
    const last = new Int16Array(this._frame);
    last.set(this._pending);
    this._post(this._pendingOffset, last);
    this._pending = null;
  }

  _post(offset, data) {
    const msg = { type: "frame", offset, frames: this._frame, data, options: this.jitter };
    if (this.node) this.node.port.postMessage(msg, [data.buffer]);
    else this._opening.then(() => this.node.port.postMessage(msg, [data.buffer]));
  }

  async _open(rate) {
    this.context = new AudioContext({ sampleRate: rate });
    await this.context.audioWorklet.addModule(PLAYER_WORKLET);
    this.node = new AudioWorkletNode(this.context, "earshot-player", { outputChannelCount: [1] });
    this.node.port.onmessage = (e) => {
      if (e.data.type === "error") { emit(this, "error", { code: "jitter", message: e.data.message }); return; }
      this.stats = e.data;
      emit(this, "stats", e.data);
    };
    this.node.connect(this.context.destination);
  }

  stop() {
    if (this.sub) this.sub.close();
    if (this.context && this.context.state !== "closed") this.context.close();
  }
}

function downmix(x, channels) {
  const n = Math.floor(x.length / channels);
  const out = new Int16Array(n);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let c = 0; c < channels; c++) s += x[i * channels + c];
    out[i] = Math.round(s / channels);
  }
  return out;
}
