"""wss:// and https:// served by earshot itself, with a self-signed CA (issue 12, must-show 3).

Ingest (with a drop and resume on the way), subscribe and REST over TLS; the Python
client and the CLI verify the certificate against ``--cafile`` and refuse a wrong one,
and by default trust only the system store (which does not know the test CA).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from hardening_helpers import TlsServer, client_context, make_ca, make_server_cert
from websockets.asyncio.client import connect

from earshot.client import Publisher
from earshot.client.transport import client_ssl
from earshot.errors import ClientError
from helpers import CutProxy, ServerProcess

pytestmark = pytest.mark.slow
RATE = 16000


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("pki")
    ca, ca_cert, ca_key = make_ca(tmp, "earshot-test")
    other, _, _ = make_ca(tmp, "someone-else")
    cert, key = make_server_cert(tmp, ca_cert, ca_key)
    return {"ca": ca, "other": other, "cert": cert, "key": key}


@pytest.fixture(scope="module")
def tls_server(pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[ServerProcess]:
    # certificate and key from the environment (the options work the same)
    srv = TlsServer(tmp_path_factory.mktemp("tls") / "data", pki["ca"], "--ack-interval", "0.05",
                    env={"EARSHOT_CERTFILE": str(pki["cert"]),
                         "EARSHOT_KEYFILE": str(pki["key"])})
    srv.start()
    yield srv
    srv.stop()


def tone(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.standard_normal(int(RATE * seconds)) * 4000).astype(np.int16)


async def test_ingest_resume_and_subscribe_over_wss(tls_server: ServerProcess,
                                                    pki: dict[str, Path]) -> None:
    ctx = client_ssl(pki["ca"])
    x = tone(3.0)
    heard: list[bytes] = []
    sub_url = f"wss://127.0.0.1:{tls_server.port}/ws/subscribe?stream=*&audio=s16"
    async with connect(sub_url, ssl=client_context(pki["ca"])) as sub:
        assert json.loads(await sub.recv())["type"] == "subscribed"

        async def listen(stream: asyncio.Future[str]) -> None:
            want = None
            async for raw in sub:
                if isinstance(raw, bytes):
                    if want:
                        heard.append(raw)
                    continue
                msg = json.loads(raw)
                if msg["type"] == "audio":
                    want = msg["stream"] == await stream
                elif msg["type"] == "stream_ended" and msg["stream"] == await stream \
                        and msg["state"] == "finished":  # ("interrupted" at the cut)
                    return

        sid: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        listener = asyncio.create_task(listen(sid))
        async with CutProxy(tls_server.port) as proxy:
            pub = Publisher(f"wss://127.0.0.1:{proxy.port}/ws", rate=RATE, format="s16",
                            ssl=ctx, name="over-tls")
            await pub.start()
            sid.set_result(pub.stream_id)
            blocks = np.array_split(x, 30)
            for i, block in enumerate(blocks):
                await pub.send(block)
                if i == 12:
                    await pub.wait_acked(timeout=30)
                    proxy.cut()  # TLS and TCP torn down mid-stream: resume over a new one
                await asyncio.sleep(0.01)
            frames = await pub.stop()
        await asyncio.wait_for(listener, 30)
    assert frames == len(x) and pub.reconnects >= 1 and proxy.connections >= 2
    rec = httpx.get(f"{tls_server.http}/api/streams/{pub.stream_id}", verify=ctx).json()
    y, rate = sf.read(tls_server.data_dir / rec["path"], dtype="int16")
    assert rate == RATE and np.array_equal(y, x)  # exact, across the resume
    got = np.frombuffer(b"".join(heard), "<i2")
    assert np.array_equal(got, x)  # and the subscriber over wss:// heard every sample


async def test_client_refuses_a_certificate_it_cannot_verify(tls_server: ServerProcess,
                                                             pki: dict[str, Path]) -> None:
    for ctx in (client_ssl(pki["other"]), client_ssl(None)):  # wrong CA; system store
        pub = Publisher(tls_server.url, rate=RATE, format="s16", ssl=ctx)
        with pytest.raises(ClientError) as exc:
            await asyncio.wait_for(pub.start(), 30)
        assert exc.value.code == "tls" and "certificate" in str(exc.value).lower()
        assert pub.reconnects == 0  # refused at once, not retried
    with pytest.raises(ClientError) as exc:
        client_ssl(pki["ca"].parent / "missing.pem")
    assert exc.value.code == "tls"


def test_cli_over_tls_with_cafile(tls_server: ServerProcess, pki: dict[str, Path],
                                  tmp_path: Path) -> None:
    wav = tmp_path / "tone.wav"
    x = tone(1.0)
    sf.write(wav, x, RATE, subtype="PCM_16")

    def earshot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "earshot.cli", *args],
                              capture_output=True, text=True, timeout=120)

    ok = earshot("send", str(wav), "--url", tls_server.url, "--cafile", str(pki["ca"]), "-q")
    assert ok.returncode == 0, ok.stderr
    sid = ok.stdout.split()[1].rstrip(":")
    listed = earshot("streams", "--url", tls_server.url, "--cafile", str(pki["ca"]), "--json")
    assert listed.returncode == 0, listed.stderr
    rec = next(s for s in json.loads(listed.stdout)["streams"] if s["id"] == sid)
    assert rec["frames"] == len(x)
    live = earshot("stream", "--file", str(wav), "--url", tls_server.url, "--cafile",
                   str(pki["ca"]), "-q")  # (a file played as a microphone, in real time)
    assert live.returncode == 0 and f"{len(x)} frames" in live.stdout, live.stderr
    bad = earshot("send", str(wav), "--url", tls_server.url, "--cafile", str(pki["other"]), "-q")
    assert bad.returncode == 4 and "certificate" in bad.stderr.lower(), bad.stderr
    bad = earshot("tail", "*", "--url", tls_server.url, "--cafile", str(pki["other"]))
    assert bad.returncode == 4 and "certificate" in bad.stderr.lower(), bad.stderr
    for cmd in (["worker", "level", "--retries", "0"], ["listen", sid, "--out",
                                                         str(tmp_path / "heard.wav")]):
        bad = earshot(*cmd, "--url", tls_server.url, "--cafile", str(pki["other"]))
        assert bad.returncode == 4 and "certificate" in bad.stderr.lower(), (cmd, bad.stderr)
    bad = earshot("streams", "--url", tls_server.url)  # system store: not trusted
    assert bad.returncode != 0 and "certificate" in bad.stderr.lower(), bad.stderr


def test_serve_refuses_a_bad_certificate_clearly(pki: dict[str, Path], tmp_path: Path) -> None:
    for cert, key, words in [(pki["cert"], tmp_path / "missing.key", "No such file"),
                             (pki["cert"], pki["ca"], "cannot load the TLS certificate"),
                             (pki["cert"], None, "both --certfile and --keyfile")]:
        args = ["--certfile", str(cert)] + (["--keyfile", str(key)] if key else [])
        out = subprocess.run([sys.executable, "-m", "earshot.cli", "serve", "--data-dir",
                              str(tmp_path / "d"), *args], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 2 and words in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


async def test_listen_and_tail_over_wss_with_cafile(tls_server: ServerProcess,
                                                    pki: dict[str, Path],
                                                    tmp_path: Path) -> None:
    """The success path of the reading commands over wss:// with --cafile: `listen --out`
    records a live stream from where it joins to the end, `tail ID` follows it to its end."""
    x = tone(4.0)
    pub = Publisher(tls_server.url, rate=RATE, format="s16", ssl=client_ssl(pki["ca"]))
    await pub.start()
    sid = pub.stream_id
    cli = [sys.executable, "-m", "earshot.cli"]
    tls = ["--url", tls_server.url, "--cafile", str(pki["ca"])]
    heard = tmp_path / "heard.wav"
    listen = await asyncio.create_subprocess_exec(
        *cli, "listen", sid, "--out", str(heard), *tls, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    tail = await asyncio.create_subprocess_exec(
        *cli, "tail", sid, *tls, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    await asyncio.sleep(1.5)  # both connected (a second for the interpreter, TLS)
    for i in range(0, len(x), RATE // 10):  # real time
        await pub.send(x[i:i + RATE // 10])
        await asyncio.sleep(0.1)
    assert await pub.stop() == len(x)
    out, err = await asyncio.wait_for(listen.communicate(), 60)
    assert listen.returncode == 0, err.decode()
    y = sf.read(heard, dtype="int16")[0]
    first = len(x) - len(y)
    assert 0 <= first < len(x) // 2, "heard less than half"
    assert np.array_equal(y, x[first:])  # every frame from joining to the end, over TLS
    out, err = await asyncio.wait_for(tail.communicate(), 60)
    assert tail.returncode == 0, err.decode()
    assert "stream_ended" in out.decode()
