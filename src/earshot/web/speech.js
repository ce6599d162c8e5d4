// speech.js — a Web Speech API `SpeechRecognition` that listens through earshot.
//
//   import { SpeechRecognition } from "http://HOST:8000/web/earshot.js";
//   // instead of: const SpeechRecognition = window.webkitSpeechRecognition;
//
// The surface a page written for webkitSpeechRecognition uses:
//   properties  continuous, interimResults, lang (unset: the server's language),
//               maxAlternatives, grammars
//   methods     start(), stop(), abort()
//   events      start, audiostart, soundstart, speechstart, result, nomatch, speechend,
//               soundend, audioend, error, end (addEventListener and on<type> handlers)
//   result      event.resultIndex (the lowest index that changed) and event.results: every
//               final so far, in order, followed by the current interim(s); results[i]
//               .isFinal, results[i][0].transcript, .confidence, .length, .item(i)
//   error       event.error: not-allowed (microphone permission), audio-capture (no or busy
//               microphone), network (server unreachable or lost), service-not-allowed
//               (the server refused the token, or has no speech-to-text), language-not-
//               supported, no-speech (8 s without speech, continuous=false), aborted (abort())
//
// continuous=false ends after the first final (or nomatch); continuous=true keeps going
// until stop(). stop() delivers the final of the utterance in progress, then `end`.
// Extra constructor options (not in the standard): {server, token, deviceId, noSpeechTimeout}.

import { defaultServer } from "./common.js";
import { Recorder } from "./recorder.js";

const TYPES = ["start", "audiostart", "soundstart", "speechstart", "result", "nomatch",
               "speechend", "soundend", "audioend", "error", "end"];

function makeAlternative(transcript, confidence) {
  return Object.freeze({ transcript, confidence });
}

function makeResult(alternatives, isFinal) {
  const r = alternatives.slice();
  r.isFinal = isFinal;
  r.item = (i) => r[i] ?? null;
  return Object.freeze(r);
}

function makeList(results) {
  const l = results.slice();
  l.item = (i) => l[i] ?? null;
  return Object.freeze(l);
}

class SpeechRecognitionEvent extends Event {
  constructor(type, { resultIndex = 0, results = makeList([]) } = {}) {
    super(type);
    this.resultIndex = resultIndex;
    this.results = results;
    this.interpretation = null;
    this.emma = null;
  }
}

class SpeechRecognitionErrorEvent extends Event {
  constructor(type, { error, message = "" }) {
    super(type);
    this.error = error;
    this.message = message;
  }
}

const ERROR_CODES = {
  "permission-denied": "not-allowed", "no-microphone": "audio-capture",
  "microphone-busy": "audio-capture", "audio-capture": "audio-capture",
  unreachable: "network", "bad-url": "network", gap: "network",
  unauthorized: "service-not-allowed", forbidden: "service-not-allowed",
};

export class SpeechRecognition extends EventTarget {
  constructor(options = {}) {
    super();
    this.continuous = false;
    this.interimResults = false;
    this.lang = "";
    this.maxAlternatives = 1;
    this.grammars = [];
    this.server = options.server || defaultServer();
    this.token = options.token || null;
    this.deviceId = options.deviceId || null;
    this.noSpeechTimeout = options.noSpeechTimeout ?? 8000;
    for (const t of TYPES) this["on" + t] = null;
    this._rec = null;
    this._active = false;
  }

  start() {
    if (this._active) throw new DOMException("recognition has already started", "InvalidStateError");
    this._active = true;
    this._finals = []; // final results, in order
    this._interims = new Map(); // segment -> interim result, after the finals
    this._done = new Set(); // segments whose final was delivered
    this._fired = new Set();
    this._stopping = false;
    this._ended = false;
    // an explicit lang is the stream's language; without one the server's default applies
    const lang = (this.lang || "").trim() || null;
    const rec = new Recorder({ server: this.server, token: this.token, deviceId: this.deviceId,
                               processors: ["vad", "asr"], name: "speech-recognition",
                               language: lang, codec: "pcm" });
    this._rec = rec;
    rec.addEventListener("ready", () => this._once("start"), { once: true });
    rec.addEventListener("audiostart", () => {
      this._once("audiostart");
      if (!this.continuous && this.noSpeechTimeout > 0)
        this._noSpeech = setTimeout(() => {
          if (!this._fired.has("speechstart")) this._error("no-speech", "No speech was detected.", true);
        }, this.noSpeechTimeout);
    });
    rec.addEventListener("speech_start", () => { this._once("soundstart"); this._once("speechstart"); });
    rec.addEventListener("speech_end", () => { if (!this.continuous) this._speechEnded(); });
    rec.addEventListener("audioend", () => { this._speechEnded(); this._once("audioend"); });
    rec.addEventListener("transcript", (e) => this._onTranscript(e.detail));
    rec.addEventListener("warning", (e) => {
      const w = e.detail || {};
      if (w.code === "processor_unavailable" && /asr|speech-to-text/.test(w.message || ""))
        this._error("service-not-allowed", w.message, true);
      else if (/language/.test(w.code || "")) this._error("language-not-supported", w.message, true);
    });
    rec.addEventListener("error", (e) =>
      this._error(ERROR_CODES[e.detail.code] || "network", e.detail.message));
    rec.start().catch((err) => this._error(ERROR_CODES[err.code] || "network", err.message));
  }

  /** Stop listening; the utterance in progress still gets its final result, then `end`. */
  stop() {
    if (!this._rec || this._stopping || this._ended) return;
    this._stopping = true;
    clearTimeout(this._noSpeech);
    this._speechEnded();
    const rec = this._rec;
    if (rec.state === "starting") { // not connected yet: nothing to wait for
      rec.abort();
      this._finish();
      return;
    }
    rec.stop().then(() => this._finish(),
                    (err) => this._error(ERROR_CODES[err.code] || "network", err.message));
  }

  /** Stop at once, without further results: `error` (aborted), then `end`. */
  abort() {
    if (!this._rec || this._ended) return;
    this._rec.abort();
    this._error("aborted", "recognition was aborted");
  }

  _onTranscript(t) {
    if (this._ended || this._done.has(t.segment)) return;
    if (!this.continuous && this._done.size) return; // one utterance only: already over
    const text = (t.text || "").trim();
    if (t.final) {
      this._done.add(t.segment);
      const hadInterim = this._interims.delete(t.segment);
      const index = this._finals.length;
      if (!text) { // nothing recognised in this utterance
        if (hadInterim) this._fireResult(index); // the interim is gone
        this._fire(new SpeechRecognitionEvent("nomatch", { resultIndex: index,
                                                           results: this._list() }));
      } else {
        this._finals.push(makeResult(this._alternatives(t, text), true));
        this._fireResult(index);
      }
      if (!this.continuous) this.stop();
      return;
    }
    if (!this.interimResults || !text) return;
    this._interims.set(t.segment, makeResult(this._alternatives(t, text), false));
    const order = [...this._interims.keys()].sort((a, b) => a - b);
    this._fireResult(this._finals.length + order.indexOf(t.segment));
  }

  _alternatives(t, text) {
    const ps = (t.words || []).map((w) => w.p).filter((p) => typeof p === "number");
    const confidence = ps.length ? ps.reduce((a, b) => a + b, 0) / ps.length
                                 : (typeof t.confidence === "number" ? t.confidence : 0);
    const alts = [makeAlternative(text, confidence)];
    for (const a of t.alternatives || []) {
      if (alts.length >= Math.max(1, this.maxAlternatives)) break;
      if (a && typeof a.text === "string") alts.push(makeAlternative(a.text.trim(), a.confidence ?? 0));
    }
    return alts.slice(0, Math.max(1, this.maxAlternatives));
  }

  _list() {
    const interims = [...this._interims.entries()].sort((a, b) => a[0] - b[0]).map((e) => e[1]);
    return makeList(this._finals.concat(interims));
  }

  _fireResult(index) {
    this._fire(new SpeechRecognitionEvent("result", { resultIndex: index, results: this._list() }));
  }

  _speechEnded() {
    if (this._fired.has("speechstart")) { this._once("speechend"); this._once("soundend"); }
  }

  _error(error, message, stop = false) {
    if (this._ended) return;
    this._fire(new SpeechRecognitionErrorEvent("error", { error, message: message || "" }));
    if (stop && this._rec && this._rec.state === "recording") {
      this._ended = true; // no more results; finish once the recorder has stopped
      this._rec.stop().catch(() => {}).finally(() => { this._ended = false; this._finish(); });
      this._speechEnded();
      return;
    }
    if (this._rec && this._rec.state !== "stopped" && this._rec.state !== "failed")
      this._rec.abort();
    this._finish();
  }

  _finish() {
    if (this._ended) return;
    this._ended = true;
    clearTimeout(this._noSpeech);
    this._speechEnded();
    if (this._fired.has("audiostart")) this._once("audioend");
    this._fire(new Event("end"));
    this._rec = null;
    this._active = false;
  }

  _once(type) {
    if (this._fired.has(type)) return;
    this._fired.add(type);
    this._fire(new Event(type));
  }

  _fire(ev) {
    this.dispatchEvent(ev);
    const handler = this["on" + ev.type];
    if (typeof handler === "function") handler.call(this, ev);
  }
}

export { SpeechRecognitionEvent, SpeechRecognitionErrorEvent };
