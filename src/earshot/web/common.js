// common.js — what every earshot.js module shares: the default server, plain-words errors.

/**
 * The earshot server this module was loaded from, as a WebSocket base URL ("ws://host:port",
 * with any path prefix a reverse proxy adds). A page on another site that imports
 * http://HOST:8000/web/earshot.js talks to HOST:8000, not to its own host.
 */
export function defaultServer() {
  let base;
  try {
    base = new URL("..", import.meta.url); // .../web/common.js → the server's root
  } catch {
    base = null;
  }
  if (!base || !/^https?:$/.test(base.protocol)) {
    const loc = globalThis.location;
    if (!loc || !/^https?:$/.test(loc.protocol)) return "ws://127.0.0.1:8000";
    base = new URL("/", loc.href);
  }
  const path = base.pathname.replace(/\/$/, "");
  return (base.protocol === "https:" ? "wss://" : "ws://") + base.host + path;
}

/** The same server as an http(s) base URL, for the REST API. */
export function httpBase(server) {
  return server.replace(/^ws(s?):/, "http$1:");
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
  if (name === "NotReadableError" || name === "AbortError")
    return new EarshotError("The microphone is busy or unavailable (another program may be " +
                            "using it).", "microphone-busy");
  if (err instanceof EarshotError) return err;
  return new EarshotError(String((err && err.message) || err), "error");
}

export function emit(target, type, detail) {
  target.dispatchEvent(new CustomEvent(type, { detail }));
}
