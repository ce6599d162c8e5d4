"""The default install (what ``./run serve`` installs: ``pip install '.[server]'``, no other
extra), in a venv that has only it: every feature a user would try either works (asserted
on words, samples and events) or is refused clearly, up front (a Code, or one line naming
the package to install), never with a traceback (issue 19, "dependencies present or
refused up front")."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from earshot.asr.wer import wer
from earshot.client import OpusPublisher
from helpers import FIXTURES, ServerProcess, free_port, of, stream_file

pytestmark = pytest.mark.slow

#: import name → the extra that brings it (none of them is in ``earshot[server]``)
OPTIONAL = {"redis": "redis", "psycopg": "postgres", "psycopg_pool": "postgres",
            "faster_whisper": "asr", "boto3": "s3", "webrtc_noise_gain": "cleanup",
            "pywebrtc_audio": "call"}
# (sounddevice, the mic extra, is not in this list: pocketsphinx, the built-in engine of
# the server extra, depends on it, so every server install has it)
#: what the server extra must bring (Opus ingest and listeners, the built-in engine)
PRESENT = ("av", "pocketsphinx", "fastapi", "uvicorn", "onnxruntime")
READING = json.loads((FIXTURES / "reading_16k.json").read_text())
#: the first three sentences of the Festival fixture and the pause after them
THREE = READING["speech"][:3]
CUT = THREE[-1]["end"] + 8000


def run(venv: Path, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=_env())


def _env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("EARSHOT_")}
    env.pop("PYTHONPATH", None)  # only what the venv holds
    return env


def assert_clean(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text, text


@pytest.fixture(scope="module")
def server(serve_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        ServerProcess]:
    """``earshot serve`` from the default install, on its defaults, for most checks."""
    home = tmp_path_factory.mktemp("default-install")
    srv = ServerProcess(home / "data", port=free_port())
    srv.command = [str(serve_venv / "bin" / "earshot")]
    srv.cwd = home  # not the source tree
    srv.env = _env()
    srv.start()
    yield srv
    srv.stop()
    log = srv.log.read_text()
    assert_clean(log)


def test_the_default_install_has_no_optional_package(serve_venv: Path, tmp_path: Path) -> None:
    probe = ("import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m)"
             f" is not None for m in {[*OPTIONAL, *PRESENT]!r}}}))")
    r = run(serve_venv, "python", "-c", probe, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {**dict.fromkeys(OPTIONAL, False),
                                    **dict.fromkeys(PRESENT, True)}
    r = run(serve_venv, "python", "-c", "import earshot; print(earshot.__file__)", cwd=tmp_path)
    assert str(serve_venv) in r.stdout  # the installed copy, not this source tree


async def test_pcm_stream_with_level_vad_asr_and_spectrogram(server: ServerProcess) -> None:
    x, rate = sf.read(FIXTURES / "reading_16k.wav", dtype="int16")
    x = x[:CUT]
    pub, events, _ = await stream_file(server.url, x, rate, realtime=False, block_s=0.1,
                                       processors=["level", "vad", "asr", "spectrogram"])
    assert not of(events, "error") and not of(events, "warning"), events
    assert len(of(events, "level")) >= len(x) / rate - 1
    segs = of(events, "segment")
    assert len(segs) == 3
    for seg, truth in zip(segs, THREE, strict=True):
        assert abs(seg["start"] - truth["start_s"]) <= 0.15
        assert abs(seg["end"] - truth["end_s"]) <= 0.15
    finals = [e for e in of(events, "transcript") if e["final"]]
    assert len(finals) == 3
    text = " ".join(e["text"] for e in finals)
    assert wer(" ".join(t["text"] for t in THREE), text) <= 0.15, text
    assert {"weather", "cold", "report", "friday", "milk", "bread"} <= set(text.split()), text
    spec = of(events, "spectrogram")
    assert spec and sum(e["frames"] for e in spec) >= (len(x) / rate - 0.5) * 100
    assert {e["mels"] for e in spec} == {64}
    # the archive holds exactly what was sent
    rec = httpx.get(f"{server.http}/api/streams/{pub.stream_id}").json()
    assert (rec["state"], rec["frames"]) == ("finished", len(x))
    assert np.array_equal(sf.read(server.data_dir / rec["path"], dtype="int16")[0], x)


async def _listen_opus(url: str) -> list[dict]:
    got: list[dict] = []
    async with connect(url.replace("/ws", "/ws/subscribe") + "?stream=*&audio=opus") as ws:
        header = None
        async for raw in ws:
            if isinstance(raw, bytes):
                assert header is not None
                got.append({**header, "bytes": len(raw)})
                header = None
                continue
            msg = json.loads(raw)
            assert msg.get("type") != "error", msg
            if msg["type"] == "audio":
                header = msg
            elif msg["type"] == "stream_ended":
                return got
    return got


async def test_opus_stream_and_an_opus_listener(server: ServerProcess) -> None:
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="int16")
    x = x[: rate * 2]
    listener = asyncio.create_task(_listen_opus(server.url))
    await asyncio.sleep(0.3)  # subscribed before the stream starts
    pub = OpusPublisher(server.url, rate=rate, processors=["level"])
    await pub.start()
    block = rate // 50
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(0, len(x), block):
        await pub.send(x[i:i + block])
        await asyncio.sleep(max(0.0, t0 + (i + block) / rate - loop.time()))
    assert await pub.stop() == len(x)
    got = await asyncio.wait_for(listener, 10)
    assert got and {h["format"] for h in got} == {"opus"}
    assert got[-1]["offset"] + got[-1]["frames"] >= len(x) - rate // 10
    rec = httpx.get(f"{server.http}/api/streams/{pub.stream_id}").json()
    assert (rec["state"], rec["frames"]) == ("finished", len(x))


@pytest.mark.parametrize("fmt", ["wav", "ogg-opus"])
def test_openai_rest_door_with_plain_multipart(server: ServerProcess, fmt: str) -> None:
    """A WAV upload, and a compressed one (Ogg Opus: decoded with PyAV, in the server
    extra)."""
    x, rate = sf.read(FIXTURES / "reading_16k.wav", dtype="int16")
    buf = io.BytesIO()
    if fmt == "wav":
        sf.write(buf, x[: THREE[1]["end"] + 8000], rate, format="WAV", subtype="PCM_16")
    else:
        sf.write(buf, x[: THREE[1]["end"] + 8000], rate, format="OGG", subtype="OPUS")
    r = httpx.post(f"{server.http}/v1/audio/transcriptions", timeout=60,
                   files={"file": (f"two.{fmt[:3]}", buf.getvalue(), f"audio/{fmt[:3]}")},
                   data={"model": "whisper-1"})
    assert r.status_code == 200, r.text
    text = r.json()["text"].lower()
    truth = " ".join(t["text"] for t in THREE[:2])
    assert wer(truth, text) <= (0.2 if fmt == "wav" else 0.3), text  # (Opus is lossy)
    assert {"weather", "report"} <= set(text.replace(".", " ").replace(",", " ").split())


async def test_deepgram_live_door(server: ServerProcess) -> None:
    x, rate = sf.read(FIXTURES / "reading_16k.wav", dtype="int16")
    x = x[: THREE[1]["end"] + 8000]
    finals = []
    async with connect(server.url.replace("/ws", "/v1/listen")
                       + f"?encoding=linear16&sample_rate={rate}") as ws:
        for i in range(0, len(x), 3200):
            await ws.send(x[i:i + 3200].tobytes())
        await ws.send(json.dumps({"type": "CloseStream"}))
        async for raw in ws:
            msg = json.loads(raw)
            assert msg.get("type") in ("Results", "Metadata", "SpeechStarted",
                                       "UtteranceEnd"), msg
            if msg.get("is_final"):
                finals.append(msg["channel"]["alternatives"][0]["transcript"])
    text = " ".join(finals)
    assert wer(" ".join(t["text"] for t in THREE[:2]), text) <= 0.2, text


async def test_a_denoise_filter_in_start_is_left_out_with_a_warning(
        server: ServerProcess) -> None:
    async with connect(server.url) as ws:
        await ws.send(json.dumps({"type": "start", "rate": 16000, "channels": 1,
                                  "format": "s16", "processors": ["level"],
                                  "filters": ["denoise"]}))
        msgs = []
        while (m := json.loads(await ws.recv()))["type"] != "ready":
            msgs.append(m)
        msgs.append(m)
        await ws.send((np.arange(16000) % 200 - 100).astype("<i2").tobytes())
        await ws.send(json.dumps({"type": "stop"}))
        while (m := json.loads(await ws.recv()))["type"] != "stopped":
            msgs.append(m)
    assert m["offset"] == 16000
    warnings = [e for e in msgs if e["type"] == "warning"]
    assert [(w["code"], w["filter"]) for w in warnings] == [("filter_unavailable", "denoise")]
    assert "webrtc-noise-gain" in warnings[0]["message"]
    assert not [e for e in msgs if e["type"] == "error"]


#: serve options needing an extra the default install lacks → what the error must name
REFUSED_AT_START = {
    "--filters denoise": "webrtc-noise-gain",
    "--asr-model small.en": "faster-whisper",
    "--asr-engine faster-whisper --asr-model tiny.en": "faster-whisper",
    "--bus redis://127.0.0.1:1": "redis",
    "--db postgresql://earshot@127.0.0.1:1/earshot": "psycopg",
    "--archive-store s3://bucket/prefix": "boto3",
}


def test_options_needing_a_missing_extra_are_refused_at_start(serve_venv: Path,
                                                              tmp_path: Path) -> None:
    procs = {}
    for n, (opts, _) in enumerate(REFUSED_AT_START.items()):
        procs[opts] = subprocess.Popen(
            [str(serve_venv / "bin" / "earshot"), "serve", "--port", str(free_port()),
             "--data-dir", str(tmp_path / f"d{n}"), *opts.split()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=_env())
    for opts, package in REFUSED_AT_START.items():
        out, err = procs[opts].communicate(timeout=60)
        assert procs[opts].returncode == 2, (opts, out, err)
        assert_clean(out + err)
        # (a progress line such as "loading speech-to-text model …" may come first)
        errors = [ln for ln in err.splitlines() if ln.startswith("earshot:")]
        assert len(errors) == 1 and package in errors[0], (opts, err)
        assert "pip install 'earshot[" in errors[0] and errors[0] == err.splitlines()[-1]


def test_a_call_from_the_default_install(serve_venv: Path, server: ServerProcess,
                                         tmp_path: Path) -> None:
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="int16")
    f = tmp_path / "hello.wav"
    sf.write(f, x[:rate], rate, subtype="PCM_16")
    # echo cancellation off (the default with --file): works
    r = run(serve_venv, "earshot", "call", "room1", "--url", server.url, "--name", "bot",
            "--file", str(f), "--linger", "0.3", "--out", str(tmp_path / "heard.wav"),
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert_clean(r.stderr)
    kinds = [json.loads(ln)["type"] for ln in r.stdout.splitlines()]
    assert "room" in kinds, r.stdout
    heard, heard_rate = sf.read(tmp_path / "heard.wav", dtype="int16")
    assert heard_rate == 48000 and len(heard) >= 48000
    streams = httpx.get(f"{server.http}/api/streams", params={"limit": 200}).json()["streams"]
    mine = [s for s in streams if s["name"] == "room1/bot"]
    assert [(s["state"], s["frames"]) for s in mine] == [("finished", rate)]
    # echo cancellation on, without the call extra: refused before joining, in one line
    r = run(serve_venv, "earshot", "call", "room2", "--url", server.url, "--name", "bot",
            "--file", str(f), "--aec", "on", cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert_clean(r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "pywebrtc-audio" in r.stderr
    streams = httpx.get(f"{server.http}/api/streams", params={"limit": 200}).json()["streams"]
    assert not [s for s in streams if (s["name"] or "").startswith("room2")]


def test_sound_card_commands_without_portaudio_are_refused_up_front(
        serve_venv: Path, server: ServerProcess, tmp_path: Path) -> None:
    """sounddevice comes with pocketsphinx, but the PortAudio library may be missing: then
    playing (``listen``), a microphone (``stream``) and a call's speaker are refused in one
    line naming what is missing, before anything connects."""
    r = run(serve_venv, "python", "-c", "import sounddevice", cwd=tmp_path)
    if r.returncode == 0:
        pytest.skip("PortAudio is installed here: the sound card commands may work")
    assert "PortAudio" in r.stderr
    for args, use in ((("listen", "no-such-stream"), "playback"),
                      (("stream",), "microphone input"),
                      (("call", "room3", "--aec", "off", "--agc", "off", "--ns", "off"),
                       "speaker output")):
        r = run(serve_venv, "earshot", *args, "--url", server.url, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert_clean(r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{use} needs sounddevice and PortAudio" in lines[0], lines
        assert "pip install 'earshot[mic]'" in lines[0]
    streams = httpx.get(f"{server.http}/api/streams", params={"limit": 200}).json()["streams"]
    assert not [s for s in streams if (s["name"] or "").startswith("room3")]
