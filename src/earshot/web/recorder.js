// recorder.js — record the microphone to an earshot server.
//
//   const rec = new Recorder({ processors: ["level", "vad"] });
//   rec.addEventListener("level", (e) => console.log(e.detail.rms));
//   await rec.start();            // asks for the microphone, connects, starts streaming
//   const { stream, offset } = await rec.stop();
//
// Audio is captured with an AudioWorklet (capture-worklet.js) at the device's native rate
// and sent as 16-bit PCM in 20 ms frames (or Opus, with WebCodecs). The IngestClient keeps
// every frame the server has not acknowledged and resumes after a drop, so the recording
// has no hole.

import { EarshotError, defaultServer, emit, explain } from "./common.js";
import { IngestClient } from "./ingest.js";

const CAPTURE_WORKLET = new URL("./capture-worklet.js", import.meta.url);

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
    this.language = options.language || null;
    this.frameMs = options.frameMs || 20;
    this.codec = options.codec || "auto"; // auto (Opus where WebCodecs can), opus, pcm
    this.bitrate = options.bitrate || 32000;
    this.maxBufferSeconds = options.maxBufferSeconds || 600;
    this.state = "idle"; // idle | starting | recording | stopping | stopped | failed
    this.rate = null;
    this.ingest = null;
    this._total = 0; // PCM frames captured
    this._encoder = null;
  }

  /** Audio inputs; labels appear once the page has microphone permission. */
  static async devices() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return [];
    const all = await navigator.mediaDevices.enumerateDevices();
    return all.filter((d) => d.kind === "audioinput")
      .map((d) => ({ deviceId: d.deviceId, label: d.label, groupId: d.groupId }));
  }

  get stream() { return this.ingest && this.ingest.stream; }
  get resumeToken() { return this.ingest && this.ingest.resumeToken; }
  get reconnects() { return this.ingest ? this.ingest.reconnects : 0; }
  get frames() { return this.ingest ? this.ingest.total : 0; }
  get acked() { return this.ingest ? this.ingest.acked : 0; }
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
    try {
      this.context = new AudioContext(); // the device's native rate: no resampling here
      this.rate = this.context.sampleRate;
      // choose the codec before any frame can arrive
      this.wire = (this.codec !== "pcm" && await opusSupported(this.rate, this.bitrate))
        ? "opus" : "s16";
      if (this.codec === "opus" && this.wire !== "opus") this._emit("warning", {
        code: "opus_unsupported", message: "this browser cannot encode Opus; sending PCM" });
      this.ingest = new IngestClient({
        server: this.server, token: this.token, format: this.wire,
        rate: this.wire === "opus" ? 48000 : this.rate, channels: 1,
        processors: this.processors, name: this.name, language: this.language,
        client: { agent: "earshot.js", userAgent: navigator.userAgent },
        emit: (type, detail) => this._emit(type, detail),
        onfail: (err) => this._fail(err),
      });
      if (this.wire === "opus") this._startEncoder();
      await this.context.audioWorklet.addModule(CAPTURE_WORKLET);
      this.source = this.context.createMediaStreamSource(this.media);
      this.node = new AudioWorkletNode(this.context, "earshot-capture", {
        numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
        processorOptions: { frameMs: this.frameMs },
      });
      this.node.port.onmessage = (e) => {
        if (e.data === "end") {
          const done = () => this._captureEnded();
          if (this._encoder) this._encoder.flush().then(done, done);
          else done();
        }
        else this._onFrame(new Int16Array(e.data));
      };
      const mute = this.context.createGain(); // keep the graph pulled, play nothing
      mute.gain.value = 0;
      this.source.connect(this.node).connect(mute).connect(this.context.destination);
      await this.ingest.connect();
    } catch (err) {
      this._releaseMic();
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
    this._stopping = new Promise((resolve, reject) => { this._stopWait = { resolve, reject }; });
    this.state = "stopping";
    this.node.port.postMessage("stop"); // the worklet sends its last frame, then "end"
    this._releaseMic();
    this._emit("audioend", {});
    try {
      const result = await this._stopping;
      this.state = "stopped";
      return result;
    } finally {
      this._release();
    }
  }

  /** Drop everything at once; the stream stays resumable on the server. */
  abort() {
    this.state = "stopped";
    this._releaseMic();
    this._release();
    if (this.ingest) this.ingest.abort();
  }

  _emit(type, detail) { emit(this, type, detail); }

  _captureEnded() {
    const stop = { type: "stop" };
    if (this._encoder) stop.length = Math.round(this._captured * 48000 / this.rate);
    this.ingest.end(stop).then((msg) => this._stopWait.resolve(msg),
                               (err) => this._stopWait.reject(err));
  }

  _startEncoder() {
    // Opus runs at 48 kHz whatever the capture rate: the stream is 48 kHz, offsets count
    // 48 kHz samples, and every packet is kept until acknowledged (packets are not split).
    this._captured = 0; // capture-rate frames given to the encoder
    this.ingest.preSkip = 312; // libopus lookahead (6.5 ms at 48 kHz); OpusHead's if given
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
      if (head.length >= 12) this.ingest.preSkip = head[10] | (head[11] << 8);
    }
    if (this._decoded === null) this._decoded = -this.ingest.preSkip;
    const data = new Uint8Array(chunk.byteLength);
    chunk.copyTo(data);
    const frames = Math.round((chunk.duration || 20000) * 48 / 1000);
    this.ingest.add({ offset: this._decoded, data, frames });
    this._decoded += frames;
    this.ingest.total = Math.max(0, this._decoded);
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
    if (this.ingest.pending / (this.rate || 48000) > this.maxBufferSeconds) {
      this._emit("overflow", { frames: data.length }); // never happens unless offline for long
      return;
    }
    this.ingest.add({ offset: this._total, data });
    this._total += data.length;
  }

  _fail(err) {
    this.state = "failed";
    this._releaseMic();
    this._emit("error", { code: err.code, message: err.message });
    if (this._stopWait) this._stopWait.reject(err);
  }

  _releaseMic() {
    if (this.media) this.media.getTracks().forEach((t) => t.stop());
  }

  _release() {
    if (this.context && this.context.state !== "closed") this.context.close();
  }
}
