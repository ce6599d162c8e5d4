// earshot.js — record to an earshot server from any page, and a Web Speech API stand-in.
//
//   import { Recorder, SpeechRecognition } from "http://HOST:8000/web/earshot.js";
//
//   const rec = new Recorder({ processors: ["level", "vad"] });
//   rec.addEventListener("level", (e) => console.log(e.detail.rms));
//   await rec.start();            // asks for the microphone, connects, starts streaming
//   const { stream, offset } = await rec.stop();
//
// Audio is captured with an AudioWorklet at the device's native rate and sent as 16-bit
// PCM in 20 ms frames. Every frame the server has not acknowledged is kept; if the
// connection drops (or the server restarts) the recorder reconnects, resumes the stream by
// offset and resends exactly what is missing, so the recording has no hole.

const WORKLET_URL = new URL("./worklet.js", import.meta.url);
const FATAL_CLOSE = (code) => (code >= 4400 && code < 4500) || code === 1008 || code === 1009;

export function defaultServer() {
  const loc = globalThis.location;
  if (!loc || !loc.host) return "ws://127.0.0.1:8000";
  return (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host;
}

export class EarshotError extends Error {
  constructor(message, code) {
    super(message);
    this.name = "EarshotError";
    this.code = code;
  }
}

/** Plain words for what getUserMedia and the network throw at people. */
export function explain(err) {
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "SecurityError")
    return new EarshotError("Microphone permission was denied. Allow the microphone for this " +
                            "site in the browser's address bar and try again.", "permission-denied");
  if (name === "NotFoundError" || name === "OverconstrainedError")
    return new EarshotError("No microphone was found. Plug one in, or pick another device.",
                            "no-microphone");
  if (name === "NotReadableError")
    return new EarshotError("The microphone is busy or unavailable (another program may be " +
                            "using it).", "microphone-busy");
  if (err instanceof EarshotError) return err;
  return new EarshotError(String((err && err.message) || err), "error");
}

export class Recorder extends EventTarget {
  constructor(options = {}) {
    super();
    this.server = options.server || defaultServer();
    this.token = options.token || null;
    this.processors = options.processors === undefined ? ["level", "vad", "spectrogram"]
                                                        : options.processors;
    this.deviceId = options.deviceId || null;
    this.constraints = {
      echoCancellation: !!options.echoCancellation,
      noiseSuppression: !!options.noiseSuppression,
      autoGainControl: !!options.autoGainControl,
    };
    this.name = options.name || null;
    this.frameMs = options.frameMs || 20;
    this.codec = options.codec || "auto"; // auto (Opus where WebCodecs can), opus, pcm
    this.bitrate = options.bitrate || 32000;
    this.maxBufferSeconds = options.maxBufferSeconds || 600;
    this.state = "idle"; // idle | starting | recording | stopping | stopped | failed
    this.stream = null;
    this.resumeToken = null;
    this.rate = null;
    this.reconnects = 0;
    this._chunks = []; // unacknowledged frames: {offset, data: Int16Array}
    this._total = 0; // frames captured
    this._acked = 0; // frames the server has durably written
    this._sent = 0; // frames sent on the current connection
    this._ws = null;
    this._ready = false;
    this._attempt = 0;
    this._stopSent = false;
    this._captureDone = false;
    this._stopped = null;
    this._lastError = null;
  }

  /** Audio inputs; labels appear once the page has microphone permission. */
  static async devices() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return [];
    const all = await navigator.mediaDevices.enumerateDevices();
    return all.filter((d) => d.kind === "audioinput")
      .map((d) => ({ deviceId: d.deviceId, label: d.label, groupId: d.groupId }));
  }

  get frames() { return this._total; }
  get acked() { return this._acked; }
  get seconds() {
    if (this._encoder) return this._captured / this.rate;
    return this.rate ? this._total / this.rate : 0;
  }

  async start() {
    if (this.state === "starting" || this.state === "recording" || this.state === "stopping")
      throw new EarshotError("already recording", "invalid-state");
    this.state = "starting";
    const audio = { ...this.constraints, channelCount: 1 };
    if (this.deviceId) audio.deviceId = { exact: this.deviceId };
    try {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia)
        throw new EarshotError("This browser cannot capture audio here (a secure context, " +
                               "https or localhost, is needed).", "audio-capture");
      this.media = await navigator.mediaDevices.getUserMedia({ audio });
    } catch (err) {
      this.state = "failed";
      throw explain(err);
    }
    this.context = new AudioContext(); // the device's native rate: no resampling here
    this.rate = this.context.sampleRate;
    // choose the codec before any frame can arrive
    this.wire = (this.codec !== "pcm" && await opusSupported(this.rate, this.bitrate)) ? "opus"
                                                                                       : "s16";
    if (this.codec === "opus" && this.wire !== "opus") this._emit("warning", {
      code: "opus_unsupported", message: "this browser cannot encode Opus; sending PCM" });
    if (this.wire === "opus") this._startEncoder();
    await this.context.audioWorklet.addModule(WORKLET_URL);
    this.source = this.context.createMediaStreamSource(this.media);
    this.node = new AudioWorkletNode(this.context, "earshot-capture", {
      numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
      processorOptions: { frameMs: this.frameMs },
    });
    this.node.port.onmessage = (e) => {
      if (e.data === "end") {
        const done = () => { this._captureDone = true; this._pump(); };
        if (this._encoder) this._encoder.flush().then(done, done);
        else done();
      }
      else this._onFrame(new Int16Array(e.data));
    };
    const mute = this.context.createGain(); // keep the graph pulled without playing anything
    mute.gain.value = 0;
    this.source.connect(this.node).connect(mute).connect(this.context.destination);
    try {
      await this._connect();
    } catch (err) {
      this._release();
      this.state = "failed";
      throw explain(err);
    }
    this.state = "recording";
    this._emit("audiostart", { rate: this.rate, device: this.media.getAudioTracks()[0].label });
  }

  /** Stop capturing, deliver every frame, end the stream; resolves with {stream, offset}. */
  async stop() {
    if (this.state !== "recording") return null;
    const done = new Promise((resolve, reject) => { this._stopped = { resolve, reject }; });
    this.state = "stopping";
    this.node.port.postMessage("stop"); // the worklet sends its last frame, then "end"
    this._releaseMic();
    this._emit("audioend", {});
    const result = await done;
    this._release();
    return result;
  }

  /** Drop everything at once; the stream stays resumable on the server. */
  abort() {
    this.state = "stopped";
    this._releaseMic();
    this._release();
    if (this._ws) this._ws.close(1000, "aborted");
  }

  _emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  _startEncoder() {
    // Opus runs at 48 kHz whatever the capture rate: the stream is 48 kHz, offsets count
    // 48 kHz samples, and every packet is kept until acknowledged (packets are not split).
    this.streamRate = 48000;
    this._captured = 0; // capture-rate frames given to the encoder
    this._preSkip = 312; // libopus lookahead (6.5 ms at 48 kHz); OpusHead's value if given
    this._decoded = null; // stream offset of the next packet: -preSkip, set on first output
    this._encoder = new AudioEncoder({
      output: (chunk, meta) => this._onPacket(chunk, meta),
      error: (e) => this._fail(new EarshotError(`Opus encoder: ${e.message}`, "encoder")),
    });
    this._encoder.configure({ codec: "opus", sampleRate: this.rate, numberOfChannels: 1,
                              bitrate: this.bitrate });
  }

  _onPacket(chunk, meta) {
    const desc = meta && meta.decoderConfig && meta.decoderConfig.description;
    if (desc && this._decoded === null) {
      const head = new Uint8Array(desc instanceof ArrayBuffer ? desc : desc.buffer);
      if (head.length >= 12) this._preSkip = head[10] | (head[11] << 8);
    }
    if (this._decoded === null) this._decoded = -this._preSkip;
    const data = new Uint8Array(chunk.byteLength);
    chunk.copyTo(data);
    const frames = Math.round((chunk.duration || 20000) * 48 / 1000);
    this._chunks.push({ offset: this._decoded, data, frames });
    this._decoded += frames;
    this._total = Math.max(0, this._decoded);
    this._pump();
  }

  _onFrame(data) {
    if (!["starting", "recording", "stopping"].includes(this.state)) return;
    if (this._encoder) {
      const f32 = Float32Array.from(data, (v) => v / 32768);
      this._encoder.encode(new AudioData({
        format: "f32", sampleRate: this.rate, numberOfChannels: 1, numberOfFrames: f32.length,
        timestamp: Math.round(this._captured * 1e6 / this.rate), data: f32 }));
      this._captured += f32.length;
      return;
    }
    if ((this._total - this._acked) / (this.rate || 48000) > this.maxBufferSeconds) {
      this._emit("overflow", { frames: data.length }); // never happens unless offline for long
      return;
    }
    this._chunks.push({ offset: this._total, data });
    this._total += data.length;
    this._pump();
  }

  _pump() {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || !this._ready) return;
    for (const c of this._chunks) {
      const end = c.offset + (c.frames || c.data.length);
      if (end <= this._sent) continue;
      if (c.frames) ws.send(c.data); // an Opus packet: whole
      else ws.send(c.offset < this._sent ? c.data.subarray(this._sent - c.offset) : c.data);
      this._sent = end;
    }
    if (this.state === "stopping" && this._captureDone && !this._stopSent &&
        this._sent === this._total) {
      const stop = { type: "stop" };
      if (this._encoder) stop.length = Math.round(this._captured * 48000 / this.rate);
      ws.send(JSON.stringify(stop));
      this._stopSent = true;
    }
  }

  _trim(offset) {
    if (offset <= this._acked) return;
    this._acked = offset;
    while (this._chunks.length &&
           this._chunks[0].offset + (this._chunks[0].frames || this._chunks[0].data.length) <= offset)
      this._chunks.shift();
  }

  _connect() {
    return new Promise((resolve, reject) => {
      const query = this.token ? `?token=${encodeURIComponent(this.token)}` : "";
      let ws;
      try {
        ws = new WebSocket(`${this.server}/ws${query}`);
      } catch (err) {
        reject(new EarshotError(`bad server address ${this.server}: ${err.message}`, "bad-url"));
        return;
      }
      ws.binaryType = "arraybuffer";
      this._ws = ws;
      this._ready = false;
      this._stopSent = false;
      let ready = false;
      ws.onopen = () => {
        const opus = this.wire === "opus";
        const start = { type: "start", format: opus ? "opus" : "s16",
                        rate: opus ? this.streamRate : this.rate, channels: 1,
                        client: { agent: "earshot.js", userAgent: navigator.userAgent } };
        if (opus) start.pre_skip = this._preSkip;
        if (opus && this.stream) start.offset = this._acked; // resend whole packets from there
        if (this.name) start.name = this.name;
        if (this.processors) start.processors = this.processors;
        if (this.stream) { start.resume = this.stream; start.resume_token = this.resumeToken; }
        ws.send(JSON.stringify(start));
      };
      ws.onmessage = (e) => {
        if (typeof e.data !== "string") return;
        const msg = JSON.parse(e.data);
        switch (msg.type) {
          case "ready": {
            ready = true;
            if (msg.offset < this._acked || msg.offset > this._total) {
              const err = new EarshotError(`the server holds ${msg.offset} frames, this ` +
                `recorder acknowledged ${this._acked} and captured ${this._total}`, "gap");
              ws.close(1000);
              this._fail(err);
              reject(err);
              return;
            }
            if (this.stream && this.stream === msg.stream) this.reconnects += 1;
            this._attempt = 0;
            this.stream = msg.stream;
            this.resumeToken = msg.resume_token;
            if (this.wire === "opus") this._sent = this._acked; // the server drops the overlap
            else { this._trim(msg.offset); this._sent = msg.offset; }
            this._ready = true;
            this._emit("ready", msg);
            resolve(msg);
            this._pump();
            break;
          }
          case "ack":
            this._trim(msg.offset);
            this._emit("ack", msg);
            break;
          case "stopped":
            this._trim(msg.offset);
            this.state = "stopped";
            this._emit("stopped", msg);
            if (this._stopped) this._stopped.resolve(msg);
            break;
          case "error":
            this._lastError = msg;
            this._emit("servererror", msg);
            break;
          default:
            this._emit(msg.type, msg);
        }
      };
      ws.onclose = (e) => {
        if (this._ws === ws) { this._ws = null; this._ready = false; }
        if (this.state === "stopped" || this.state === "failed") return;
        const last = this._lastError;
        if (FATAL_CLOSE(e.code)) {
          const err = new EarshotError((last && last.message) || e.reason || "refused",
                                       (last && last.code) || String(e.code));
          if (!ready) reject(err);
          this._fail(err);
          return;
        }
        if (!ready && !this.stream) {
          reject(new EarshotError(`Cannot reach the earshot server at ${this.server}.`,
                                  "unreachable"));
          return;
        }
        this._reconnect(e);
      };
    });
  }

  _reconnect(e) {
    this._attempt += 1;
    const delay = Math.min(5000, 150 * 2 ** Math.min(this._attempt - 1, 6));
    this._emit("reconnecting", { attempt: this._attempt, delay, code: e && e.code });
    setTimeout(() => {
      if (this.state === "stopped" || this.state === "failed") return;
      this._connect().catch(() => {}); // failures land in onclose: retried or fatal
    }, delay);
  }

  _fail(err) {
    this.state = "failed";
    this._releaseMic();
    this._emit("error", { code: err.code, message: err.message });
    if (this._stopped) this._stopped.reject(err);
  }

  _releaseMic() {
    if (this.media) this.media.getTracks().forEach((t) => t.stop());
  }

  _release() {
    if (this.context && this.context.state !== "closed") this.context.close();
  }
}

/** Whether this browser can encode Opus with WebCodecs at this capture rate. */
export async function opusSupported(sampleRate, bitrate = 32000) {
  if (typeof AudioEncoder === "undefined" || typeof AudioData === "undefined") return false;
  try {
    const r = await AudioEncoder.isConfigSupported({ codec: "opus", sampleRate,
                                                     numberOfChannels: 1, bitrate });
    return !!r.supported;
  } catch {
    return false;
  }
}

const PLAYER = `
class EarshotPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = []; this.head = 0; this.buffered = 0; this.started = false;
    this.received = 0; this.played = 0; this.underruns = 0; this.ticks = 0;
    this.prebuffer = Math.round(sampleRate * 0.1);
    this.port.onmessage = (e) => { const x = e.data; this.queue.push(x);
      this.buffered += x.length; this.received += x.length; };
  }
  process(inputs, outputs) {
    const out = outputs[0][0];
    if (!this.started && this.buffered >= this.prebuffer) this.started = true;
    for (let i = 0; i < out.length; i++) {
      if (!this.started || this.buffered === 0) { out[i] = 0; continue; }
      const cur = this.queue[0];
      out[i] = cur[this.head++] / 32768; this.buffered--; this.played++;
      if (this.head >= cur.length) { this.queue.shift(); this.head = 0; }
    }
    if (this.started && this.buffered === 0) { this.underruns++; this.started = false; }
    if (++this.ticks % 100 === 0) this.port.postMessage({ received: this.received,
      played: this.played, underruns: this.underruns, buffered: this.buffered });
    return true;
  }
}
registerProcessor("earshot-player", EarshotPlayer);`;

/**
 * Hear a live stream: subscribes to its audio (16-bit PCM) and plays it through an
 * AudioWorklet with a 100 ms cushion (re-buffering after an underrun). Events: "stats"
 * ({received, played, underruns, buffered} samples), "ended", "error".
 */
export class Listener extends EventTarget {
  constructor(stream, options = {}) {
    super();
    this.streamId = stream;
    this.server = options.server || defaultServer();
    this.token = options.token || null;
    this.stats = { received: 0, played: 0, underruns: 0, buffered: 0 };
  }

  async start() {
    const q = new URLSearchParams({ stream: this.streamId, audio: "s16" });
    if (this.token) q.set("token", this.token);
    this.ws = new WebSocket(`${this.server}/ws/subscribe?${q}`);
    this.ws.binaryType = "arraybuffer";
    let header = null;
    this.ws.onmessage = async (e) => {
      if (typeof e.data !== "string") {
        if (header && this.node) this.node.port.postMessage(new Int16Array(e.data));
        header = null;
        return;
      }
      const msg = JSON.parse(e.data);
      if (msg.type === "audio") {
        header = msg;
        if (!this.context) await this._open(msg.rate);
      } else if (msg.type === "stream_ended" && msg.stream === this.streamId) {
        this.dispatchEvent(new CustomEvent("ended", { detail: msg }));
      } else if (msg.type === "error" && !msg.stream) {
        this.dispatchEvent(new CustomEvent("error", { detail: msg }));
      }
    };
  }

  async _open(rate) {
    this.context = new AudioContext({ sampleRate: rate });
    const url = URL.createObjectURL(new Blob([PLAYER], { type: "text/javascript" }));
    await this.context.audioWorklet.addModule(url);
    this.node = new AudioWorkletNode(this.context, "earshot-player", { outputChannelCount: [1] });
    this.node.port.onmessage = (e) => {
      this.stats = e.data;
      this.dispatchEvent(new CustomEvent("stats", { detail: e.data }));
    };
    this.node.connect(this.context.destination);
  }

  stop() {
    if (this.ws) this.ws.close();
    if (this.context) this.context.close();
  }
}

// -- Web Speech API stand-in ---------------------------------------------------------------

function makeResult(alternatives, isFinal) {
  const r = alternatives.slice();
  r.isFinal = isFinal;
  r.item = (i) => r[i];
  return r;
}

function makeList(results) {
  const l = results.slice();
  l.item = (i) => l[i];
  return l;
}

/**
 * A `SpeechRecognition` that listens through earshot: swap the constructor of code written
 * for `webkitSpeechRecognition`. Events: start, audiostart, soundstart, speechstart,
 * speechend, soundend, audioend, result (with resultIndex and results[i].isFinal,
 * results[i][0].transcript, .confidence), error, end. Results need a server started with
 * --asr-model; without one, the speech events still come and a "warning" event says why.
 */
export class SpeechRecognition extends EventTarget {
  constructor(options = {}) {
    super();
    this.continuous = false;
    this.interimResults = false;
    this.lang = "en-US";
    this.maxAlternatives = 1;
    this.grammars = null;
    this.server = options.server || defaultServer();
    this.token = options.token || null;
    this.deviceId = options.deviceId || null;
    for (const t of ["start", "audiostart", "soundstart", "speechstart", "speechend",
      "soundend", "audioend", "result", "nomatch", "error", "end"]) this["on" + t] = null;
    this._rec = null;
  }

  start() {
    if (this._rec) throw new DOMException("recognition has already started", "InvalidStateError");
    this._results = [];
    this._bySegment = new Map();
    this._ended = false;
    this._stopping = false;
    this._asr = true;
    const rec = new Recorder({ server: this.server, token: this.token, deviceId: this.deviceId,
                               processors: ["vad", "asr"], name: "speech-recognition" });
    this._rec = rec;
    rec.addEventListener("ready", () => this._fire("start"), { once: true });
    rec.addEventListener("audiostart", () => this._fire("audiostart"));
    rec.addEventListener("speech_start", () => { this._fire("soundstart"); this._fire("speechstart"); });
    rec.addEventListener("speech_end", () => {
      this._fire("speechend");
      this._fire("soundend");
      if (!this.continuous && !this._asr) this.stop();
    });
    rec.addEventListener("transcript", (e) => this._onTranscript(e.detail));
    rec.addEventListener("warning", (e) => {
      if (e.detail.code === "processor_unavailable" && /asr/.test(e.detail.message)) {
        this._asr = false;
        this._fire(new CustomEvent("warning", { detail: e.detail }));
      }
    });
    rec.addEventListener("error", (e) => this._error(e.detail.code, e.detail.message));
    rec.start().catch((err) => {
      const map = { "permission-denied": "not-allowed", "no-microphone": "audio-capture",
                    "microphone-busy": "audio-capture", unreachable: "network",
                    unauthorized: "not-allowed" };
      this._error(map[err.code] || "network", err.message);
    });
  }

  stop() {
    if (!this._rec || this._stopping || this._ended) return;
    this._stopping = true;
    this._rec.stop()
      .then(() => this._finish())
      .catch((err) => this._error("network", err.message));
  }

  abort() {
    if (!this._rec || this._ended) return;
    this._rec.abort();
    this._finish();
  }

  _onTranscript(t) {
    if (!t.final && !this.interimResults) return;
    let index = this._bySegment.get(t.segment);
    if (index === undefined) {
      index = this._results.length;
      this._bySegment.set(t.segment, index);
      this._results.push(null);
    }
    const ps = (t.words || []).map((w) => w.p).filter((p) => typeof p === "number");
    const confidence = ps.length ? ps.reduce((a, b) => a + b, 0) / ps.length : 0;
    this._results[index] = makeResult([{ transcript: t.text, confidence }], !!t.final);
    const ev = new Event("result");
    ev.resultIndex = index;
    ev.results = makeList(this._results);
    this._fire(ev);
    if (t.final && !this.continuous) this.stop();
  }

  _error(error, message) {
    if (this._ended) return;
    const ev = new Event("error");
    ev.error = error;
    ev.message = message;
    this._fire(ev);
    this._finish();
  }

  _finish() {
    if (this._ended) return;
    this._ended = true;
    this._fire("audioend");
    this._fire("end");
    this._rec = null;
  }

  _fire(evOrType) {
    const ev = typeof evOrType === "string" ? new Event(evOrType) : evOrType;
    this.dispatchEvent(ev);
    const handler = this["on" + ev.type];
    if (typeof handler === "function") handler.call(this, ev);
  }
}

export default { Recorder, Listener, SpeechRecognition, defaultServer, explain, opusSupported,
                 EarshotError };
