// subscribe.js — the client side of /ws/subscribe (the page's dashboard and Listener).
//
// The server sends JSON events; with audio=s16|f32|opus each batch of audio is a JSON header
// {"type":"audio","stream","offset","frames","rate","channels","format"} immediately
// followed by one binary message with the samples. Subscription pairs them, as
// earshot.subscriber.messages does in Python: onevent(event) for events, onaudio(header,
// payload) for audio.

import { defaultServer } from "./common.js";

export function subscribeUrl(server, { stream = "*", audio = null, token = null } = {}) {
  const q = new URLSearchParams({ stream });
  if (audio) q.set("audio", audio);
  if (token) q.set("token", token);
  return `${server || defaultServer()}/ws/subscribe?${q}`;
}

/** Pairs audio headers with their payloads on an open or opening WebSocket. */
export function readSubscription(ws, { onevent = () => {}, onaudio = () => {} } = {}) {
  ws.binaryType = "arraybuffer";
  let header = null;
  ws.addEventListener("message", (e) => {
    if (typeof e.data !== "string") {
      if (header) onaudio(header, e.data);
      header = null;
      return;
    }
    let msg;
    try {
      msg = JSON.parse(e.data);
    } catch {
      return; // the server only sends JSON; ignore anything else
    }
    if (msg.type === "audio") header = msg;
    else onevent(msg);
  });
  return ws;
}

/**
 * A subscription: `new Subscription({server, stream, audio, token, onevent, onaudio,
 * onclose})`. `refused` is the server's error event when it refused the subscription
 * (bad token, bad format); `close()` ends it.
 */
export class Subscription {
  constructor({ server = null, stream = "*", audio = null, token = null, onevent, onaudio,
                onclose } = {}) {
    this.url = subscribeUrl(server, { stream, audio, token });
    this.refused = null;
    this.ws = new WebSocket(this.url);
    readSubscription(this.ws, {
      onevent: (msg) => {
        if (msg.type === "error" && !msg.stream) this.refused = msg;
        if (onevent) onevent(msg);
      },
      onaudio,
    });
    if (onclose) this.ws.addEventListener("close", (e) => onclose(e, this.refused));
  }

  get open() { return this.ws.readyState <= 1; }

  close() { this.ws.close(); }
}
