// The earshot page: record, recordings library, live dashboard. Uses earshot.js only.
import { Listener, Recorder, Subscription, defaultServer, explain } from "./earshot.js";

const $ = (sel, root = document) => root.querySelector(sel);
const store = {
  get: (k, d = "") => localStorage.getItem("earshot." + k) ?? d,
  set: (k, v) => localStorage.setItem("earshot." + k, v),
};
const app = { recorder: null, lastStopped: null, capabilities: null, page: 0, perPage: 10 };
window.earshotApp = app; // for the curious, and for the browser tests

// -- server access ------------------------------------------------------------------------
function token() { return $("#token").value.trim(); }
function authHeaders() { return token() ? { Authorization: `Bearer ${token()}` } : {}; }
// <audio src> and download links never carry the token: the server signs a short-lived
// URL for each stream (POST /api/streams/ID/links, ?sig=, 5 minutes), renewed when near
// its end.
const signed = new Map(); // stream id -> {audio, transcript, expires}
function freshLinks(id) {
  const known = signed.get(id);
  return known && (known.expires === null || known.expires - Date.now() / 1000 > 30)
    ? known : null;
}
async function signedLinks(id) {
  const known = freshLinks(id);
  if (known) return known;
  const links = await api(`/api/streams/${id}/links`, { method: "POST" });
  signed.set(id, links);
  return links;
}
function withQuery(url, query) { return `${url}${url.includes("?") ? "&" : "?"}${query}`; }
async function api(path, options = {}) {
  let r;
  try {
    r = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  } catch {
    throw new Error("The earshot server cannot be reached.");
  }
  if (r.status === 401) {
    throw Object.assign(new Error(token()
      ? "The server refused this token (401 Unauthorized): check the token under Record → Options."
      : "This server needs a token (401 Unauthorized): enter it under Record → Options."),
    { status: 401 });
  }
  if (!r.ok) throw new Error(`${r.status}: ${(await r.json().catch(() => ({}))).detail || r.statusText}`);
  return r.status === 204 ? null : r.json();
}

// -- views --------------------------------------------------------------------------------
function showView() {
  const name = (location.hash || "#record").slice(1);
  for (const s of document.querySelectorAll("main > section"))
    s.hidden = s.dataset.view !== name;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.view === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (name === "recordings") loadRecordings();
  if (name === "dashboard") openDashboard();
}
window.addEventListener("hashchange", showView);

// -- record -------------------------------------------------------------------------------
function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function fillDevices() {
  const select = $("#device");
  const devices = await Recorder.devices().catch(() => []);
  const wanted = store.get("device");
  select.innerHTML = "";
  devices.forEach((d, i) => {
    const opt = document.createElement("option");
    opt.value = d.deviceId;
    opt.textContent = d.label || `Microphone ${i + 1}`;
    opt.selected = d.deviceId === wanted;
    select.append(opt);
  });
  if (!devices.length) {
    const opt = document.createElement("option");
    opt.textContent = "No microphone found";
    opt.value = "";
    select.append(opt);
  }
}

function processorsWanted() {
  const p = ["level", "vad", "spectrogram"];
  if (app.capabilities && app.capabilities.asr && app.capabilities.asr.available) p.push("asr");
  return p;
}

async function toggleRecording() {
  const button = $("#record");
  if (app.recorder && app.recorder.state === "recording") {
    button.disabled = true;
    try {
      app.lastStopped = await app.recorder.stop();
      status(`saved ${app.lastStopped.stream} (${app.lastStopped.duration.toFixed(1)} s)`);
    } catch (err) {
      showError(explain(err).message);
    } finally {
      button.disabled = false;
      button.textContent = "● Record";
      button.classList.remove("is-recording");
      setSpeech(false);
      clearLevel();
    }
    return;
  }
  showError("");
  resetLive();
  const rec = new Recorder({
    server: defaultServer(), token: token() || null, deviceId: $("#device").value || null,
    processors: processorsWanted(), name: $("#name").value.trim() || null,
    echoCancellation: $("#opt-ec").checked, noiseSuppression: $("#opt-ns").checked,
    autoGainControl: $("#opt-agc").checked, codec: $("#codec").value,
  });
  app.recorder = rec;
  rec.addEventListener("level", (e) => drawLevel(e.detail));
  rec.addEventListener("speech_start", () => setSpeech(true));
  rec.addEventListener("speech_end", () => setSpeech(false));
  rec.addEventListener("spectrogram", (e) => drawSpectrogram(e.detail));
  rec.addEventListener("transcript", (e) => showTranscript(e.detail));
  rec.addEventListener("reconnecting", (e) =>
    status(`connection lost — reconnecting (attempt ${e.detail.attempt})…`));
  rec.addEventListener("ready", (e) => status(`recording ${e.detail.stream} (${e.detail.format})` +
                                              (e.detail.offset ? `, resumed at ${e.detail.offset}` : "")));
  rec.addEventListener("error", (e) => {
    showError(e.detail.message);
    button.textContent = "● Record";
    button.classList.remove("is-recording");
    clearLevel();
  });
  rec.addEventListener("warning", (e) => console.warn("earshot:", e.detail.message));
  button.disabled = true;
  try {
    await rec.start();
    button.textContent = "■ Stop";
    button.classList.add("is-recording");
    await fillDevices(); // labels are visible now that permission was given
    if (rec.deviceId) $("#device").value = rec.deviceId;
    tick();
  } catch (err) {
    const e = explain(err);
    showError(e.code === "unauthorized"
      ? "This server needs a token: enter it under Options, then press Record again."
      : e.message);
  } finally {
    button.disabled = false;
  }
}

function tick() {
  const rec = app.recorder;
  if (!rec || rec.state !== "recording") return;
  const s = rec.seconds;
  $("#elapsed").textContent = `${Math.floor(s / 60)}:${(s % 60).toFixed(1).padStart(4, "0")}`;
  requestAnimationFrame(tick);
}

function status(text) { $("#server-status").textContent = text; }

function serverLine(c) {
  const asr = c.asr || {};
  const stt = asr.available ? `speech-to-text ${asr.engine}${asr.model ? ` (${asr.model})` : ""}`
                            : "speech-to-text off";
  return `server ${c.version} · ${stt}`;
}

// The header names the server's version only while the server answers.
let serverUp = null;
async function checkServer() {
  try {
    const r = await fetch("/healthz", { headers: authHeaders(), cache: "no-store" });
    if (!r.ok && r.status !== 401) throw new Error(String(r.status));
    if (r.ok) app.capabilities = await r.json();
    if (serverUp !== true) {
      serverUp = true;
      status(app.capabilities ? serverLine(app.capabilities) : "server up");
    }
  } catch {
    if (serverUp !== false) {
      serverUp = false;
      status("server unreachable — retrying");
    }
  }
}

function clearLevel() { // after Stop the meter falls to nothing instead of freezing
  const c = $("#level");
  const ctx = c.getContext("2d");
  ctx.fillStyle = "#e5e7eb";
  ctx.fillRect(0, 0, c.width, c.height);
  $("#level-db").textContent = "−∞ dB";
}

function resetLive() {
  $("#transcript .finals").textContent = "";
  $("#transcript .interim").textContent = "";
  const c = $("#spectrogram");
  c.getContext("2d").clearRect(0, 0, c.width, c.height);
  setSpeech(false);
}

function setSpeech(on) {
  const el = $("#speech");
  el.textContent = on ? "speech" : "silence";
  el.classList.toggle("active", on);
}

function levelColor(db) { return db > -6 ? "#dc2626" : db > -18 ? "#eab308" : "#16a34a"; }

function drawBar(canvas, rms, peak) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  const x = (db) => Math.max(0, Math.min(1, (db + 60) / 60)) * w;
  ctx.fillStyle = "#e5e7eb";
  ctx.fillRect(0, 0, w, h);
  ctx.fillStyle = levelColor(rms);
  ctx.fillRect(0, 0, x(rms), h);
  ctx.fillStyle = "#111827";
  ctx.fillRect(Math.max(0, x(peak) - 2), 0, 2, h);
}

function drawLevel(ev) {
  drawBar($("#level"), ev.rms, ev.peak);
  $("#level-db").textContent = ev.rms <= -120 ? "−∞ dB" : `${ev.rms.toFixed(1)} dB`;
}

function heat(v) { // 0..255 → a dark-to-bright palette
  const t = v / 255;
  return [Math.round(255 * Math.min(1, t * 1.6)), Math.round(255 * Math.max(0, t * 1.6 - 0.6)),
          Math.round(255 * Math.max(0, 0.4 - Math.abs(t - 0.25)) * 2)];
}

function drawSpectrogram(ev) {
  const canvas = $("#spectrogram");
  const ctx = canvas.getContext("2d");
  const bytes = Uint8Array.from(atob(ev.data), (c) => c.charCodeAt(0));
  const { frames, mels } = ev;
  const h = canvas.height;
  ctx.drawImage(canvas, -frames, 0); // scroll left by one pixel per 10 ms frame
  const img = ctx.createImageData(frames, h);
  for (let f = 0; f < frames; f++) {
    for (let y = 0; y < h; y++) {
      const m = Math.min(mels - 1, Math.floor((h - 1 - y) * mels / h)); // low bands at bottom
      const [r, g, b] = heat(bytes[f * mels + m]);
      const i = (y * frames + f) * 4;
      img.data[i] = r; img.data[i + 1] = g; img.data[i + 2] = b; img.data[i + 3] = 255;
    }
  }
  ctx.putImageData(img, canvas.width - frames, 0);
}

function showTranscript(t) {
  if (t.final) {
    $("#transcript .finals").textContent += (t.text ? t.text + " " : "");
    $("#transcript .interim").textContent = "";
  } else {
    $("#transcript .interim").textContent = t.text;
  }
}

// -- recordings ---------------------------------------------------------------------------
async function loadRecordings() {
  const list = $("#recordings");
  try {
    const page = await api(`/api/streams?limit=${app.perPage}&offset=${app.page * app.perPage}`);
    list.innerHTML = "";
    for (const s of page.streams) list.append(recordingItem(s));
    const first = page.total ? app.page * app.perPage + 1 : 0;
    $("#page-info").textContent = `${first}–${app.page * app.perPage + page.streams.length} of ${page.total}`;
    $("#prev-page").disabled = app.page === 0;
    $("#next-page").disabled = !page.next;
    if (!page.total) list.innerHTML = '<li class="hint">No recordings yet.</li>';
  } catch (err) {
    list.innerHTML = "";
    const li = document.createElement("li");
    li.className = "error";
    li.setAttribute("role", "alert");
    li.textContent = err.message;
    list.append(li);
    $("#page-info").textContent = "";
    $("#prev-page").disabled = true;
    $("#next-page").disabled = true;
  }
}

function recordingItem(s) {
  const li = $("#recording-item").content.firstElementChild.cloneNode(true);
  li.dataset.stream = s.id;
  $(".title", li).textContent = s.name || s.id;
  $(".when", li).textContent = new Date(s.created * 1000).toLocaleString();
  $(".duration", li).textContent = `${s.duration.toFixed(1)} s`;
  $(".state", li).textContent = s.state === "finished" ? "" : s.state;
  const audio = $("audio", li);
  const link = $(".download", li);
  const sign = async () => {
    const links = await signedLinks(s.id);
    if (audio.getAttribute("src") !== links.audio) audio.src = links.audio;
    link.href = links.audio;
    return links;
  };
  li.sign = sign;
  sign().catch((err) => showError(err.message));
  audio.addEventListener("error", () => { signed.delete(s.id); sign().catch(() => {}); });
  link.addEventListener("pointerdown", () => sign().catch(() => {}));
  $(".delete", li).addEventListener("click", async () => {
    if (!confirm(`Delete ${s.name || s.id} and its files?`)) return;
    try {
      await api(`/api/streams/${s.id}`, { method: "DELETE" });
      loadRecordings();
    } catch (err) {
      showError(err.message);
    }
  });
  rangeControls(li, s);
  return li;
}

// A range of a recording: typed in seconds, or dragged on the waveform; the link asks the
// server for exactly that range (GET /api/streams/ID/audio?start=S&end=E, a WAV).
function rangeControls(li, s) {
  const start = $(".range-start", li), end = $(".range-end", li);
  const link = $(".download-range", li), info = $(".range-info", li);
  const canvas = $(".waveform", li);
  start.max = end.max = s.duration.toFixed(3);
  end.value = s.duration.toFixed(3);
  let waveform = null; // the peaks, once loaded: redrawn with the selection
  const update = () => {
    const a = Number(start.value), b = Number(end.value);
    const ok = start.value !== "" && end.value !== "" && a >= 0 && b > a &&
               b <= Number(end.max);
    if (ok) {
      const known = freshLinks(s.id);
      if (known) link.href = withQuery(known.audio, `start=${a}&end=${b}`);
      else signedLinks(s.id).then((links) => {
        if (li.range && li.range[0] === a && li.range[1] === b)
          link.href = withQuery(links.audio, `start=${a}&end=${b}`);
      }).catch((err) => showError(err.message));
      link.removeAttribute("aria-disabled");
      info.textContent = `${(b - a).toFixed(3)} s`;
    } else {
      link.removeAttribute("href");
      link.setAttribute("aria-disabled", "true");
      info.textContent = `choose a start before the end, within 0–${end.max} s`;
    }
    li.range = ok ? [a, b] : null;
    if (waveform) paintWaveform(canvas, ...waveform, li.range);
  };
  start.addEventListener("input", update);
  end.addEventListener("input", update);
  let anchor = null;
  const at = (ev) => {
    const r = canvas.getBoundingClientRect();
    return Math.min(1, Math.max(0, (ev.clientX - r.left) / r.width)) * s.duration;
  };
  canvas.addEventListener("pointerdown", (ev) => {
    anchor = at(ev);
    canvas.setPointerCapture(ev.pointerId);
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (anchor === null) return;
    const t = at(ev);
    start.value = Math.min(anchor, t).toFixed(3);
    end.value = Math.max(anchor, t).toFixed(3);
    update();
  });
  canvas.addEventListener("pointerup", () => { anchor = null; });
  update();
  loadWaveform(s, canvas.width).then((w) => { waveform = w; paintWaveform(canvas, ...w, li.range); })
                 .catch(() => {});
}

async function loadWaveform(s, width) {
  return Promise.all([
    api(`/api/streams/${s.id}/peaks?width=${width}`),
    api(`/api/streams/${s.id}/segments`),
  ]);
}

function paintWaveform(canvas, peaks, segs, range = null) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, mid = h / 2;
  ctx.clearRect(0, 0, w, h);
  if (peaks.duration > 0) {
    ctx.fillStyle = "rgba(37, 99, 235, 0.18)"; // speech segments
    for (const seg of segs.segments) {
      const x0 = (seg.start / peaks.duration) * w, x1 = (seg.end / peaks.duration) * w;
      ctx.fillRect(x0, 0, Math.max(1, x1 - x0), h);
    }
  }
  ctx.fillStyle = "#374151";
  peaks.max.forEach((hi, x) => {
    const lo = peaks.min[x];
    ctx.fillRect(x, mid - hi * mid, 1, Math.max(1, (hi - lo) * mid));
  });
  if (range && peaks.duration > 0 && (range[0] > 0 || range[1] < peaks.duration)) {
    const x0 = (range[0] / peaks.duration) * w, x1 = (range[1] / peaks.duration) * w;
    ctx.fillStyle = "rgba(217, 119, 6, 0.28)"; // the selected range
    ctx.fillRect(x0, 0, Math.max(1, x1 - x0), h);
  }
}

// -- dashboard ----------------------------------------------------------------------------
let dashboard = null;
function openDashboard() {
  if (dashboard && dashboard.open) return;
  const rows = new Map();
  const body = $("#dashboard tbody");
  body.innerHTML = "";
  const empty = () => {
    $("#dashboard-empty").hidden = rows.size > 0;
    $("#dashboard").hidden = rows.size === 0; // no headers over an empty table
  };
  empty();
  const add = (info) => {
    if (rows.has(info.stream)) return rows.get(info.stream);
    const tr = document.createElement("tr");
    tr.dataset.stream = info.stream;
    tr.innerHTML = `<td><code></code></td><td class="name"></td>
      <td><canvas width="200" height="14"></canvas></td><td class="speech-cell">silence</td>
      <td class="t">0.0 s</td><td><button type="button" class="listen">Listen</button>
      <span class="heard"></span></td>`;
    $("code", tr).textContent = info.stream;
    $(".listen", tr).addEventListener("click", () => toggleListen(info.stream, tr));
    $(".name", tr).textContent = info.name || "";
    body.append(tr);
    rows.set(info.stream, tr);
    empty();
    return tr;
  };
  const onevent = (ev) => {
    if (ev.type === "subscribed") { ev.live.forEach(add); empty(); return; }
    if (ev.type === "error" && !ev.stream) { showError(ev.message); return; }
    if (!ev.stream) return;
    if (ev.type === "stream_ended") {
      const tr = rows.get(ev.stream);
      if (tr) tr.remove();
      rows.delete(ev.stream);
      empty();
      return;
    }
    const tr = add(ev);
    if (ev.type === "level") {
      drawBar($("canvas", tr), ev.rms, ev.peak);
      tr.dataset.rms = ev.rms;
      $(".t", tr).textContent = `${ev.t.toFixed(1)} s`;
    } else if (ev.type === "speech_start" || ev.type === "speech_end") {
      $(".speech-cell", tr).textContent = ev.type === "speech_start" ? "speech" : "silence";
    }
  };
  dashboard = new Subscription({ server: defaultServer(), stream: "*", token: token() || null,
    onevent,
    onclose: (e, refused) => {
      dashboard = null;
      if (refused) return; // refused (e.g. a wrong token): the error is shown, no retry loop
      setTimeout(() => { if (location.hash === "#dashboard") openDashboard(); }, 1000);
    },
  });
}

async function toggleListen(stream, tr) {
  const button = $(".listen", tr);
  if (app.listener && app.listener.streamId === stream) {
    app.listener.stop();
    app.listener = null;
    button.textContent = "Listen";
    return;
  }
  if (app.listener) app.listener.stop();
  const listener = new Listener(stream, { token: token() || null });
  app.listener = listener;
  button.textContent = "Stop";
  listener.addEventListener("stats", (e) => {
    const s = e.detail;
    $(".heard", tr).textContent = `${(s.played / listener.context.sampleRate).toFixed(1)} s · ` +
      `delay ${Math.round(s.delay * 1000)} ms`;
  });
  listener.addEventListener("error", (e) => showError(e.detail.message));
  listener.addEventListener("ended", () => { button.textContent = "Listen"; });
  await listener.start();
}

// -- start-up -----------------------------------------------------------------------------
async function init() {
  $("#token").value = store.get("token");
  $("#token").addEventListener("change", () => store.set("token", token()));
  $("#device").addEventListener("change", () => store.set("device", $("#device").value));
  $("#codec").value = store.get("codec", "pcm");
  $("#codec").addEventListener("change", () => store.set("codec", $("#codec").value));
  $("#refresh-devices").addEventListener("click", fillDevices);
  $("#record").addEventListener("click", toggleRecording);
  $("#prev-page").addEventListener("click", () => { app.page = Math.max(0, app.page - 1); loadRecordings(); });
  $("#next-page").addEventListener("click", () => { app.page += 1; loadRecordings(); });
  navigator.mediaDevices && navigator.mediaDevices.addEventListener?.("devicechange", fillDevices);
  await fillDevices();
  try {
    app.capabilities = await api("/healthz");
    serverUp = true;
    const asr = app.capabilities.asr;
    status(serverLine(app.capabilities));
    const hint = !asr.available
      ? "Live transcripts are off: " + (asr.reason || "the server has no speech-to-text.")
      : asr.hint ? `Transcripts by ${asr.engine} (${asr.model}); ${asr.hint}.` : "";
    $("#transcript-hint").textContent = hint;
    $("#transcript-hint").hidden = !hint;
  } catch (err) {
    serverUp = false;
    status("server unreachable — retrying");
    showError(err.message);
  }
  setInterval(checkServer, app.healthEvery || 3000);
  showView();
  app.ready = true;
}

init();
