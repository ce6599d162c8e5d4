// call.js — take part in a call from the page.
//
//   const call = new Call({ room: "standup", name: "ann" });
//   call.addEventListener("joined", (e) => console.log(e.detail.participant));
//   await call.join();           // asks for the microphone (echo cancellation, noise
//                                // suppression, auto gain on), connects, takes a seat
//   call.mute(true); ... await call.leave();
//
// The microphone goes up as 16-bit PCM at 48 kHz in 20 ms frames through IngestClient on
// /ws/call?room=ROOM&name=NAME (acks, resume by offset: the participant's stream ROOM/NAME is
// archived like any other). What comes down is this participant's mix-minus (everyone
// else), one 20 ms Opus packet per message after 8 bytes giving its room frame; it is
// decoded with WebCodecs (or asked for as PCM, ?mix=s16, where the browser cannot decode
// Opus) and played through player-worklet.js, the jitter buffer of `earshot listen`.
// Events: the room's ("room", "joined", "left", "speaking", "silent", "muted", "unmuted",
// "ended", "levels"), the stream's ("ready", "ack", ...), "servererror", "error".
//
// Latency probe (off by default; benchmarks/bench_calls_page.py): with `probe: true`, the
// capture and player worklets look for the onsets of bursts (probe.js) in what the
// microphone callback gets and what the speaker callback plays, and the call emits
// "probe" events {side: "mic" | "speaker", time, peak}: `time` is the onset sample's own
// time in ms on Date.now()'s clock (the system clock, comparable with Python's time.time()
// on the same machine): for the microphone, the callback's time minus how long before it
// the sample was captured; for the speaker, plus how long after it the sample plays (the
// sound device's own buffer excluded). Without it the worklets do nothing more.
// `playerStats` holds the player's last jitter-buffer report (about once a second).

import { EarshotError, defaultServer, emit, explain } from "./common.js";
import { IngestClient } from "./ingest.js";

const CAPTURE_WORKLET = new URL("./capture-worklet.js", import.meta.url);
const PLAYER_WORKLET = new URL("./player-worklet.js", import.meta.url);
const RATE = 48000;
const FRAME = 960;

async function opusDecoding() {
  if (typeof AudioDecoder === "undefined") return false;
  try {
    const r = await AudioDecoder.isConfigSupported({ codec: "opus", sampleRate: RATE,
                                                     numberOfChannels: 1 });
    return !!r.supported;
  } catch {
    return false;
  }
}

export class Call extends EventTarget {
  constructor(options = {}) {
    super();
    this.server = options.server || defaultServer();
    this.token = options.token || null;
    this.room = options.room;
    this.name = options.name;
    this.processors = options.processors || ["vad"];
    // call mode: the browser's own echo cancellation, noise suppression and gain control
    this.constraints = {
      echoCancellation: options.echoCancellation ?? true,
      noiseSuppression: options.noiseSuppression ?? true,
      autoGainControl: options.autoGainControl ?? true,
    };
    this.keepHeard = options.keepHeard ?? true; // decoded mix kept for heardPcm()
    this.probe = !!options.probe; // "probe" events: see the top of this file
    this.playerStats = null;
    this.state = "idle"; // idle | joining | joined | leaving | left | failed
    this.participants = new Map(); // name -> {speaking, muted, level}
    this.muted = false;
    this.mix = null; // "opus" or "s16"
    this.packets = 0;
    this._heard = new Map(); // room frame -> Int16Array
    this._total = 0;
  }

  async join() {
    if (this.state !== "idle") throw new EarshotError("already joined", "invalid-state");
    this.state = "joining";
    try {
      this.media = await navigator.mediaDevices.getUserMedia({
        audio: { ...this.constraints, channelCount: 1 } });
      this.context = new AudioContext({ sampleRate: RATE });
      this.mix = (await opusDecoding()) ? "opus" : "s16";
      if (this.mix === "opus") this._startDecoder();
      await this.context.audioWorklet.addModule(CAPTURE_WORKLET);
      await this.context.audioWorklet.addModule(PLAYER_WORKLET);
      this.player = new AudioWorkletNode(this.context, "earshot-player", {
        numberOfInputs: 0, outputChannelCount: [1],
        processorOptions: { probe: this.probe } });
      this.player.port.onmessage = (e) => {
        if (e.data.type === "stats") this.playerStats = e.data;
        else if (e.data.type === "probe") this._probe("speaker", e.data);
      };
      this.player.connect(this.context.destination);
      this.source = this.context.createMediaStreamSource(this.media);
      this.capture = new AudioWorkletNode(this.context, "earshot-capture", {
        numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
        processorOptions: { frameMs: 20, probe: this.probe } });
      const mute = this.context.createGain();
      mute.gain.value = 0;
      this.source.connect(this.capture).connect(mute).connect(this.context.destination);
      const query = { room: this.room, name: this.name };
      if (this.mix === "s16") query.mix = "s16";
      this.ingest = new IngestClient({
        server: this.server, token: this.token, format: "s16", rate: RATE, channels: 1,
        processors: this.processors, client: { agent: "earshot.js call" },
        path: "/ws/call", query, onbinary: (data) => this._packet(data),
        emit: (type, detail) => this._event(type, detail),
        onfail: (err) => { this.state = "failed"; emit(this, "error", err); },
      });
      const refused = new Promise((_, reject) => { this._refuse = reject; });
      const seated = new Promise((resolve) => { this._seated = resolve; });
      await Promise.race([this.ingest.connect().then(() => seated), refused]);
      this.capture.port.onmessage = (e) => {
        if (e.data === "end") return;
        if (e.data.type === "probe") { this._probe("mic", e.data); return; }
        const data = new Int16Array(e.data);
        this.ingest.add({ offset: this._total, data });
        this._total += data.length;
      };
    } catch (err) {
      this._release();
      this.state = "failed";
      throw explain(err);
    }
    this.state = "joined";
    return this.roomState;
  }

  /** Mute (the others hear silence from you) or unmute. */
  mute(muted = true) {
    this.muted = !!muted;
    if (this.ingest) this.ingest.sendJson({ type: "mute", muted: this.muted });
  }

  /** Stop the microphone, send what is left, leave the room (the stream is finished). */
  async leave() {
    if (this.state !== "joined") return null;
    this.state = "leaving";
    this.media.getTracks().forEach((t) => t.stop());
    this.capture.port.onmessage = null;
    let stopped = null;
    try {
      stopped = await this.ingest.end();
    } finally {
      this._release();
      this.state = "left";
    }
    return stopped;
  }

  /** What was heard (the decoded mix), 48 kHz 16-bit, from the first packet on, on the
   * room's frames (silence where a packet never came). */
  heardPcm() {
    const frames = [...this._heard.keys()].sort((a, b) => a - b);
    if (!frames.length) return new Int16Array(0);
    const first = frames[0];
    const out = new Int16Array(frames[frames.length - 1] - first + FRAME);
    for (const f of frames) out.set(this._heard.get(f), f - first);
    return out;
  }

  // -- internals --------------------------------------------------------------------------
  _event(type, msg) {
    if (type === "servererror" && this.state === "joining" && this._refuse) {
      this._refuse(new EarshotError(msg.message, msg.code));
      return;
    }
    if (type === "room") {
      this.roomState = msg;
      this.participants = new Map(msg.participants.map((p) =>
        [p.participant, { speaking: p.speaking, muted: p.muted, level: -100 }]));
      if (this._seated) this._seated(msg);
    } else if (type === "joined") {
      this.participants.set(msg.participant, { speaking: false, muted: false, level: -100 });
    } else if (type === "left") {
      this.participants.delete(msg.participant);
    } else if (["speaking", "silent", "muted", "unmuted"].includes(type)) {
      const p = this.participants.get(msg.participant);
      if (p) {
        if (type === "speaking" || type === "silent") p.speaking = type === "speaking";
        else p.muted = type === "muted";
      }
    } else if (type === "levels") {
      for (const [name, db] of Object.entries(msg.levels)) {
        const p = this.participants.get(name);
        if (p) p.level = db;
      }
    }
    emit(this, type, msg);
  }

  _probe(side, m) {
    emit(this, "probe", { side, time: m.time, peak: m.peak });
  }

  _packet(buf) {
    const view = new DataView(buf);
    const frame = Number(view.getBigUint64(0, true));
    const body = new Uint8Array(buf, 8);
    this.packets += 1;
    if (this.mix === "s16") {
      this._play(frame, new Int16Array(body.slice().buffer));
    } else if (this.decoder && this.decoder.state === "configured") {
      this.decoder.decode(new EncodedAudioChunk({
        type: "key", timestamp: Math.round(frame * 1e6 / RATE), data: body }));
    }
  }

  _startDecoder() {
    this.decoder = new AudioDecoder({
      output: (data) => {
        const f = new Float32Array(data.numberOfFrames);
        data.copyTo(f, { planeIndex: 0, format: "f32-planar" });
        const frame = Math.round(data.timestamp * RATE / 1e6);
        data.close();
        const s = new Int16Array(f.length);
        for (let i = 0; i < f.length; i++)
          s[i] = Math.max(-32768, Math.min(32767, Math.round(f[i] * 32768)));
        this._play(frame, s);
      },
      error: (err) => emit(this, "error", explain(err)),
    });
    this.decoder.configure({ codec: "opus", sampleRate: RATE, numberOfChannels: 1 });
  }

  _play(frame, pcm) {
    if (pcm.length !== FRAME) return;
    if (this.keepHeard) this._heard.set(frame, pcm);
    if (this.player)
      this.player.port.postMessage({ offset: frame, frames: FRAME, data: pcm,
                                     options: { minDelay: 0.02, maxDelay: 0.2,
                                                initialDelay: 0.04 } });
  }

  _release() {
    if (this.media) this.media.getTracks().forEach((t) => t.stop());
    if (this.decoder && this.decoder.state !== "closed") this.decoder.close();
    if (this.context && this.context.state !== "closed") this.context.close();
    if (this.ingest && this.state !== "leaving") this.ingest.abort();
  }
}
