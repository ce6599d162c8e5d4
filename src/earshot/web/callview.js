// The page's Call view: join a room by name, see who is in it (a live level meter and a
// speaking indicator from the server's VAD), mute/unmute, leave. Uses call.js.
import { Call } from "./call.js";

const $ = (sel) => document.querySelector(sel);
const view = { call: null };
window.earshotCall = view; // for the curious, and for the browser tests

function say(text) { $("#call-status").textContent = text; }
function fail(message) {
  const box = $("#call-error");
  box.textContent = message;
  box.hidden = !message;
}

function render() {
  const call = view.call;
  const list = $("#call-people");
  list.replaceChildren();
  if (!call) return;
  for (const [name, p] of call.participants) {
    const li = document.createElement("li");
    li.dataset.participant = name;
    li.dataset.speaking = String(p.speaking);
    li.dataset.level = String(p.level);
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = name + (name === call.name ? " (you)" : "");
    const meter = document.createElement("meter");
    meter.min = -60; meter.max = 0; meter.value = Math.max(-60, p.level);
    meter.setAttribute("aria-label", `${name}'s level`);
    const speech = document.createElement("span");
    speech.className = "speech" + (p.speaking ? " active" : "");
    speech.textContent = p.muted ? "muted" : p.speaking ? "speaking" : "silent";
    li.append(who, meter, speech);
    list.append(li);
  }
}

async function join() {
  const room = $("#call-room").value.trim();
  const name = $("#call-name").value.trim();
  fail("");
  if (!room || !name) { fail("Give a room and your name."); return; }
  const token = document.querySelector("#token")?.value.trim() || null;
  const call = new Call({ room, name, token });
  view.call = call;
  for (const type of ["room", "joined", "left", "speaking", "silent", "muted", "unmuted",
                      "levels"])
    call.addEventListener(type, render);
  call.addEventListener("ended", () => say("the room has ended"));
  call.addEventListener("error", (e) => fail(e.detail.message));
  $("#call-join").disabled = true;
  say("joining…");
  try {
    await call.join();
  } catch (err) {
    view.call = null;
    $("#call-join").disabled = false;
    say("");
    fail(err.message);
    return;
  }
  $("#call-join").textContent = "Leave";
  $("#call-join").disabled = false;
  $("#call-mute").disabled = false;
  say(`in ${room} as ${name}`);
  render();
}

async function leave() {
  const call = view.call;
  $("#call-join").disabled = true;
  try {
    await call.leave();
  } catch (err) {
    fail(err.message);
  }
  view.left = call;
  view.call = null;
  $("#call-join").textContent = "Join";
  $("#call-join").disabled = false;
  $("#call-mute").disabled = true;
  $("#call-mute").textContent = "Mute";
  say("left");
  render();
}

$("#call-join").addEventListener("click", () => (view.call ? leave() : join()));
$("#call-mute").addEventListener("click", () => {
  const call = view.call;
  if (!call) return;
  call.mute(!call.muted);
  $("#call-mute").textContent = call.muted ? "Unmute" : "Mute";
  $("#call-mute").setAttribute("aria-pressed", String(call.muted));
});
const saved = new URLSearchParams(location.hash.split("?")[1] || "");
if (saved.get("room")) $("#call-room").value = saved.get("room");
view.ready = true;
