"""Doors: the protocols people already use, as thin adapters over earshot's streams.

Each dialect is a pure core (no sockets, no asyncio; bytes or parsed messages in, time passed
in where it matters) that turns what its clients send into a few abstract *actions* on one
earshot stream, and earshot's events into the dialect's messages:

* :mod:`earshot.integrations.mqtt` — the MQTT bridge: events of streams to a broker;
* :mod:`earshot.integrations.wyoming` — Home Assistant's Wyoming protocol (JSONL framing,
  ``describe``/``transcribe``/audio → ``info``/``transcript``);
* :mod:`earshot.integrations.icecast` — Icecast source clients (ffmpeg, BUTT, liquidsoap):
  the request head and the answers to it;
* :mod:`earshot.integrations.decode` — compressed byte streams (MP3, Ogg, AAC, FLAC) to
  PCM blocks, for Icecast sources and containerised Deepgram audio;
* :mod:`earshot.integrations.deepgram` — Deepgram's live ``/v1/listen``;
* :mod:`earshot.integrations.openai_rest` and :mod:`earshot.integrations.openai_realtime` —
  OpenAI's ``/v1/audio/transcriptions`` and Realtime transcription sessions.

The actions and the events they expect back are in :mod:`earshot.integrations.common`.
"""
