// earshot.js — the public entry: record to an earshot server from any page, hear a live
// stream, and a Web Speech API stand-in. Import it from the server, from any site:
//
//   import { Recorder, Listener, SpeechRecognition } from "http://HOST:8000/web/earshot.js";
//
// The modules behind it (all under /web/, served with CORS):
//   common.js     defaultServer() (the server this module came from), EarshotError, explain()
//   ingest.js     IngestClient: the /ws protocol, acks, resume by offset, reconnects
//   recorder.js   Recorder: microphone → capture-worklet.js → IngestClient (PCM or Opus)
//   subscribe.js  Subscription: the /ws/subscribe protocol (events, audio header + payload)
//   jitter.js     JitterBuffer: the same adaptive jitter buffer as `earshot listen`
//   listener.js   Listener: Subscription → 20 ms frames → player-worklet.js (JitterBuffer)
//   speech.js     SpeechRecognition: the Web Speech API surface, on Recorder

export { EarshotError, defaultServer, explain, httpBase } from "./common.js";
export { IngestClient } from "./ingest.js";
export { Recorder, opusSupported } from "./recorder.js";
export { Subscription, readSubscription, subscribeUrl } from "./subscribe.js";
export { JitterBuffer, JitterError } from "./jitter.js";
export { Listener } from "./listener.js";
export { SpeechRecognition, SpeechRecognitionErrorEvent, SpeechRecognitionEvent } from "./speech.js";

import { EarshotError, defaultServer, explain } from "./common.js";
import { Listener } from "./listener.js";
import { Recorder, opusSupported } from "./recorder.js";
import { SpeechRecognition } from "./speech.js";

export default { Recorder, Listener, SpeechRecognition, defaultServer, explain, opusSupported,
                 EarshotError };
