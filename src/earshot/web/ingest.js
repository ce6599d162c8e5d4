// ingest.js — the client side of /ws (the ingest protocol), for captured audio from any
// source: keeps every frame the server has not acknowledged, and when the connection drops
// (or the server restarts) reconnects with backoff, resumes the stream by offset and resends
// exactly what is missing.
//
//   const ingest = new IngestClient({ server, token, format: "s16", rate, channels: 1,
//                                     processors, name, emit: (type, detail) => ... });
//   await ingest.connect();                      // resolves with the server's "ready"
//   ingest.add({ offset, data });                // PCM: Int16Array; Opus: {offset, data, frames}
//   const stopped = await ingest.end(stopMsg);   // after the last add(): "stop", then "stopped"
//
// Every server message is passed to emit(type, message); "error" messages as "servererror".
// Fatal failures call onfail(EarshotError).

import { EarshotError } from "./common.js";
// Every close code and what to do after it: generated from earshot/wire/codes.py
import codes from "./codes.json" with { type: "json" };

const FINAL_CLOSES = new Set(codes.final_closes);
const FATAL_CLOSE = (code) => (code >= 4400 && code < 4500) || FINAL_CLOSES.has(code);
const TRY_AGAIN_LATER = codes.close.TRY_AGAIN_LATER; // server_full, storage_full: back off

export class IngestClient {
  constructor({ server, token = null, format = "s16", rate, channels = 1, preSkip = 0,
                processors = null, name = null, language = null, client = {},
                emit = () => {}, onfail = () => {}, path = "/ws", query = {},
                onbinary = null }) {
    this.server = server;
    this.path = path; // "/ws/call" for a call (call.js), with its room and name in `query`
    this.query = query;
    this.onbinary = onbinary; // binary messages from the server (a call's mix)
    this.token = token;
    this.format = format;
    this.rate = rate;
    this.channels = channels;
    this.preSkip = preSkip;
    this.processors = processors;
    this.name = name;
    this.language = language;
    this.client = client;
    this.emit = emit;
    this.onfail = onfail;
    this.stream = null;
    this.resumeToken = null;
    this.reconnects = 0;
    this.total = 0; // frames captured (the end of the last chunk)
    this.acked = 0; // frames the server has durably written
    this.closed = false; // stopped, failed or aborted: no more reconnects
    this._chunks = []; // unacknowledged: {offset, data, frames?}
    this._sent = 0;
    this._ws = null;
    this._ready = false;
    this._attempt = 0;
    this._stop = null; // the stop message once capture has ended
    this._stopSent = false;
    this._stopped = null;
    this._lastError = null;
  }

  get packets() { return this.format === "opus"; }
  get pending() { return this.total - this.acked; }

  add(chunk) {
    this._chunks.push(chunk);
    this.total = Math.max(this.total, chunk.offset + (chunk.frames || chunk.data.length));
    this._pump();
  }

  /** Capture has ended: send `stop` once everything is sent; resolves with "stopped". */
  end(stop = { type: "stop" }) {
    const done = new Promise((resolve, reject) => { this._stopped = { resolve, reject }; });
    this._stop = stop;
    this._pump();
    return done;
  }

  /** A JSON message on the open connection (e.g. a call's mute); false if not connected. */
  sendJson(message) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(message));
    return true;
  }

  abort() {
    this.closed = true;
    if (this._ws) this._ws.close(1000, "aborted");
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
    if (this._stop && !this._stopSent && this._sent >= this.total) {
      ws.send(JSON.stringify(this._stop));
      this._stopSent = true;
    }
  }

  _trim(offset) {
    if (offset <= this.acked) return;
    this.acked = offset;
    while (this._chunks.length &&
           this._chunks[0].offset + (this._chunks[0].frames || this._chunks[0].data.length) <= offset)
      this._chunks.shift();
  }

  _fail(err) {
    if (this.closed) return;
    this.closed = true;
    this.onfail(err);
    if (this._stopped) this._stopped.reject(err);
  }

  connect() {
    return new Promise((resolve, reject) => {
      const params = new URLSearchParams(this.query);
      if (this.token) params.set("token", this.token);
      const query = params.toString() ? `?${params}` : "";
      let ws;
      try {
        ws = new WebSocket(`${this.server}${this.path}${query}`);
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
        // batch: the events of an ack interval ride along with its ack (one message)
        const start = { type: "start", format: this.format, rate: this.rate,
                        channels: this.channels, client: this.client, batch: true };
        if (this.packets) start.pre_skip = this.preSkip;
        if (this.packets && this.stream) start.offset = this.acked; // resend whole packets
        if (this.name) start.name = this.name;
        if (this.processors) start.processors = this.processors;
        if (this.language) start.language = this.language;
        if (this.stream) { start.resume = this.stream; start.resume_token = this.resumeToken; }
        ws.send(JSON.stringify(start));
      };
      ws.onmessage = (e) => {
        if (typeof e.data !== "string") {
          if (this.onbinary) this.onbinary(e.data);
          return;
        }
        const msg = JSON.parse(e.data);
        if (msg.type === "ack" && msg.events) { // (batch) the events before the ack, in order
          for (const ev of msg.events) handle(ev);
          delete msg.events;
        }
        handle(msg);
      };
      const handle = (msg) => {
        switch (msg.type) {
          case "ready": {
            ready = true;
            if (msg.offset < this.acked || msg.offset > this.total) {
              const err = new EarshotError(`the server holds ${msg.offset} frames, this ` +
                `recorder acknowledged ${this.acked} and captured ${this.total}`, "gap");
              ws.close(1000);
              this._fail(err);
              reject(err);
              return;
            }
            if (this.stream && this.stream === msg.stream) this.reconnects += 1;
            this._attempt = 0;
            this.stream = msg.stream;
            this.resumeToken = msg.resume_token;
            if (this.packets) this._sent = this.acked; // the server drops the overlap
            else { this._trim(msg.offset); this._sent = msg.offset; }
            this._ready = true;
            this.emit("ready", msg);
            resolve(msg);
            this._pump();
            break;
          }
          case "ack":
            this._trim(msg.offset);
            this.emit("ack", msg);
            break;
          case "stopped":
            this._trim(msg.offset);
            this.closed = true;
            this.emit("stopped", msg);
            if (this._stopped) this._stopped.resolve(msg);
            break;
          case "error":
            this._lastError = msg;
            this.emit("servererror", msg);
            break;
          default:
            this.emit(msg.type, msg);
        }
      };
      ws.onclose = (e) => {
        if (this._ws === ws) { this._ws = null; this._ready = false; }
        if (this.closed) return;
        const last = this._lastError;
        if (FATAL_CLOSE(e.code)) {
          const err = new EarshotError((last && last.message) || e.reason || "refused",
                                       (last && last.code) || String(e.code));
          if (!ready) reject(err);
          this._fail(err);
          return;
        }
        if (!ready && !this.stream && e.code === TRY_AGAIN_LATER) {
          // a busy server refused a new stream: retry, and settle the first connect() then
          this._reconnect(e, () => this.connect().then(resolve, reject));
          return;
        }
        if (!ready && !this.stream) {
          this.closed = true;
          reject(new EarshotError(`Cannot reach the earshot server at ${this.server}.`,
                                  "unreachable"));
          return;
        }
        this._reconnect(e);
      };
    });
  }

  _reconnect(e, retry = null) {
    this._attempt += 1;
    // jittered (0.5x to 1.5x), so pages dropped together by a restart come back spread out
    const delay = Math.min(5000, 150 * 2 ** Math.min(this._attempt - 1, 6)) *
      (0.5 + Math.random());
    this.emit("reconnecting", { attempt: this._attempt, delay, code: e && e.code });
    setTimeout(() => {
      if (this.closed) return;
      if (retry) retry();
      else this.connect().catch(() => {}); // failures land in onclose: retried or fatal
    }, delay);
  }
}
