// jitter.js — the adaptive jitter buffer of `earshot listen` (src/earshot/client/jitter.py), for the
// page's Listener. Pure: no I/O, no clock; every call takes `now` in seconds. The same
// contract and the same decisions as the Python class, line for line (tests/web/
// test_jitter_js.py replays one schedule through both and compares every pop):
//
//   packets are exactly `frame` samples at `offset`s on one grid; pop() once per frame of
//   playout clock returns {offset, frames, payload, kind: "audio"|"concealed"|"waiting",
//   mediaOffset, skipped}. Delay adapts to the p95 of recent relative transit, pre-buffers
//   `target + 1` frames, stretches on underrun, accelerates (skips) when above target.
//
// See the Python module's docstring for the algorithm and the reasons behind it.

const QUANTILE = 0.95;
const EPS = 1e-9;

export class JitterError extends Error {
  constructor(message) { super(message); this.name = "JitterError"; }
}

function intArg(name, v) {
  if (!Number.isInteger(v)) throw new JitterError(`${name} must be an integer, got ${v}`);
  return v;
}

function secondsArg(name, v, positive = false) {
  v = Number(v);
  if (!Number.isFinite(v) || v < 0 || (positive && v === 0))
    throw new JitterError(`${name} must be a finite ${positive ? "positive" : "non-negative"} ` +
                          `number of seconds, got ${v}`);
  return v;
}

function timeArg(now) {
  now = Number(now);
  if (!Number.isFinite(now)) throw new JitterError(`now must be a finite number of seconds, got ${now}`);
  return now;
}

const mod = (a, b) => ((a % b) + b) % b;
const fdiv = (a, b) => Math.floor(a / b);

export class JitterBuffer {
  constructor(rate, frame, { minDelay = 0.02, maxDelay = 1.0, initialDelay = 0.06,
                             history = 2.0, accelerateEvery = 4 } = {}) {
    this._rate = intArg("rate", rate);
    this._frame = intArg("frame", frame);
    if (this._rate <= 0 || this._frame <= 0)
      throw new JitterError(`rate and frame must be positive, got ${rate} and ${frame}`);
    this._min = secondsArg("minDelay", minDelay);
    this._max = secondsArg("maxDelay", maxDelay);
    if (this._min > this._max) throw new JitterError(`minDelay ${minDelay} exceeds maxDelay ${maxDelay}`);
    this._initial = secondsArg("initialDelay", initialDelay);
    this._history = secondsArg("history", history, true);
    this._accelEvery = intArg("accelerateEvery", accelerateEvery);
    if (this._accelEvery < 1) throw new JitterError(`accelerateEvery must be >= 1, got ${accelerateEvery}`);

    this._maxFrames = this._framesFor(this._max);
    this._buf = new Map(); // offset -> payload, all offsets >= _pos once set
    this._grid = null;
    this._pos = null;
    this._out = null;
    this._running = false;
    this._holds = 0;
    this._sinceSkip = this._accelEvery;
    this._arrivals = []; // [arrival time, relative transit], oldest first
    this._arrivalsHead = 0;
    this._epoch = null;
    this._target = Math.min(Math.max(this._initial, this._min), this._max);
    this._seen = new Set();
    this._seenOrder = [];
    this._seenLimit = Math.max(256, 2 * this._framesFor(this._history + this._max));

    this._received = 0; this._late = 0; this._duplicates = 0; this._played = 0;
    this._lost = 0; this._held = 0; this._accelerated = 0;
  }

  // -- input ---------------------------------------------------------------------------

  push(offset, frames, payload, now) {
    intArg("offset", offset);
    intArg("frames", frames);
    now = timeArg(now);
    if (frames !== this._frame)
      throw new JitterError(`packet has ${frames} frames; this buffer needs exactly ${this._frame} per packet`);
    if (offset < 0) throw new JitterError(`negative packet offset ${offset}`);
    if (this._grid === null) this._grid = mod(offset, this._frame);
    else if (mod(offset, this._frame) !== this._grid)
      throw new JitterError(`packet offset ${offset} is off the packet grid (offsets must be ` +
                            `${this._grid} mod ${this._frame})`);
    if (this._buf.has(offset) || this._seen.has(offset)) { this._duplicates += 1; return; }
    this._received += 1;
    this._arrivals.push([now, now - offset / this._rate]);
    if (this._epoch === null) this._epoch = now;
    this._prune(now);
    if (this._pos !== null && offset < this._pos) {
      this._late += 1;
      this._remember(offset);
      return;
    }
    this._buf.set(offset, payload);
  }

  // -- output --------------------------------------------------------------------------

  pop(now) {
    now = timeArg(now);
    this._updateTarget(now);
    let tgt = this._framesFor(this._target);
    const frame = this._frame;
    let skipped = 0;
    if (!this._running) {
      const start = this._ready(tgt);
      if (start === null) return this._advanceWaiting(0);
      if (this._pos !== null) skipped = this._jump(this._minKey(), false);
      skipped += this._jump(start);
      this._running = true;
      this._holds = 0;
      this._sinceSkip = 0;
      if (this._out === null) this._out = start;
    } else if (this._buf.size) {
      const pos = this._pos;
      let gap = fdiv(this._minKey() - pos, frame);
      if (gap > this._maxFrames) { // the stream jumped ahead: a discontinuity, not a loss
        this._forgetHistory();
        this._updateTarget(now);
        tgt = this._framesFor(this._target);
        skipped = this._jump(pos + gap * frame, false);
        gap = 0;
      }
      const end = this._segmentEnd();
      const span = fdiv(end - this._pos, frame);
      if (span > this._maxFrames + 1) { // overflow: back to the live edge
        skipped += this._jump(end - (tgt + 1) * frame);
        this._sinceSkip = 0;
      } else if (gap && span >= tgt + 2) { // surplus and frames missing: skip those, free
        skipped += this._jump(pos + Math.min(gap, span - tgt - 1) * frame);
      } else if (span >= tgt + 2 && this._sinceSkip >= this._accelEvery) { // accelerate
        skipped += this._jump(pos + frame);
        this._sinceSkip = 0;
      }
    }
    this._sinceSkip += 1;

    const pos = this._pos, out = this._out;
    if (this._buf.has(pos)) {
      const payload = this._buf.get(pos);
      this._buf.delete(pos);
      this._remember(pos);
      this._pos = pos + frame;
      this._out = out + frame;
      this._holds = 0;
      this._played += 1;
      return playout(out, frame, payload, "audio", pos, skipped);
    }
    if (this._buf.size && fdiv(this._segmentEnd() - pos, frame) > tgt) {
      this._pos = pos + frame; // lost (or hopelessly late): conceal it and move on
      this._out = out + frame;
      this._holds = 0;
      this._lost += 1;
      return playout(out, frame, null, "concealed", pos, skipped);
    }
    this._holds += 1; // underrun, or missing while below target: stretch
    if (this._holds > this._maxFrames) { // stalled: stop concealing, pre-buffer again
      this._running = false;
      this._holds = 0;
      this._forgetHistory();
      return this._advanceWaiting(skipped);
    }
    this._out = out + frame;
    this._held += 1;
    return playout(out, frame, null, "concealed", null, skipped);
  }

  // -- state ---------------------------------------------------------------------------

  get stats() {
    const concealed = this._lost + this._held;
    const consumed = this._played + this._lost;
    return {
      delay: this._bufferedFrames() / this._rate,
      targetDelay: this._target,
      received: this._received,
      late: this._late,
      duplicates: this._duplicates,
      concealedFrames: concealed,
      concealedMs: concealed * this._frame * 1000 / this._rate,
      acceleratedFrames: this._accelerated,
      lossRate: consumed ? this._lost / consumed : 0,
      playedFrames: this._played,
      lostFrames: this._lost,
      heldFrames: this._held,
      bufferedPackets: this._buf.size,
    };
  }

  reset() {
    this._buf.clear();
    this._grid = null;
    this._pos = null;
    this._running = false;
    this._holds = 0;
    this._seen.clear();
    this._seenOrder = [];
    this._forgetHistory();
  }

  get started() { return this._running; }

  // -- internals -----------------------------------------------------------------------

  _framesFor(seconds) {
    return Math.max(0, Math.ceil(seconds * this._rate / this._frame - EPS));
  }

  _minKey() { let m = Infinity; for (const k of this._buf.keys()) if (k < m) m = k; return m; }
  _maxKey() { let m = -Infinity; for (const k of this._buf.keys()) if (k > m) m = k; return m; }

  _bufferedFrames() {
    if (!this._buf.size) return 0;
    const base = this._running && this._pos !== null ? this._pos : this._minKey();
    return this._maxKey() + this._frame - base;
  }

  _segmentEnd() {
    const keys = [...this._buf.keys()].sort((a, b) => a - b);
    const limit = this._maxFrames * this._frame;
    let end = keys[0] + this._frame;
    for (let i = 1; i < keys.length; i++) {
      if (keys[i] - end > limit) break;
      end = keys[i] + this._frame;
    }
    return end;
  }

  _prune(now) {
    const horizon = now - this._history;
    while (this._arrivalsHead < this._arrivals.length &&
           this._arrivals[this._arrivalsHead][0] < horizon) this._arrivalsHead++;
    if (this._arrivalsHead > 1024) {
      this._arrivals = this._arrivals.slice(this._arrivalsHead);
      this._arrivalsHead = 0;
    }
  }

  _updateTarget(now) {
    this._prune(now);
    let estimate = 0;
    const n = this._arrivals.length - this._arrivalsHead;
    if (n) {
      const rels = new Float64Array(n);
      for (let i = 0; i < n; i++) rels[i] = this._arrivals[this._arrivalsHead + i][1];
      rels.sort();
      estimate = rels[Math.max(0, Math.ceil(QUANTILE * n) - 1)] - rels[0];
    }
    if (this._epoch === null || now - this._epoch < this._history)
      estimate = Math.max(estimate, this._initial);
    this._target = Math.min(Math.max(estimate, this._min), this._max);
  }

  _ready(tgt) {
    if (!this._buf.size) return null;
    const earliest = this._minKey(), end = this._maxKey() + this._frame;
    const need = (tgt + 1) * this._frame;
    if (end - earliest < need) return null;
    return Math.max(earliest, end - need);
  }

  _jump(newPos, count = true) {
    const old = this._pos !== null ? this._pos : this._minKey();
    for (const off of [...this._buf.keys()]) {
      if (off < newPos) { this._buf.delete(off); this._remember(off); }
    }
    this._pos = newPos;
    const n = fdiv(newPos - old, this._frame);
    if (count) this._accelerated += n;
    return n;
  }

  _forgetHistory() {
    this._arrivals = [];
    this._arrivalsHead = 0;
    this._epoch = null;
  }

  _remember(offset) {
    if (this._seen.has(offset)) return;
    this._seen.add(offset);
    this._seenOrder.push(offset);
    if (this._seenOrder.length > this._seenLimit) this._seen.delete(this._seenOrder.shift());
  }

  _advanceWaiting(skipped) {
    const out = this._out;
    if (out === null) return playout(0, this._frame, null, "waiting", null, skipped);
    this._out = out + this._frame;
    return playout(out, this._frame, null, "waiting", null, skipped);
  }
}

function playout(offset, frames, payload, kind, mediaOffset = null, skipped = 0) {
  return { offset, frames, payload, kind, mediaOffset, skipped };
}
