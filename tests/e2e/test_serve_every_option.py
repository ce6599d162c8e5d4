"""``earshot serve`` with every documented option at a non-default value, all at once.

The arguments are generated from the settings' declarations (earshot.config): each option
gets its sample value (:meth:`earshot.config.Option.sample`: a declared example, another
choice, or a number in range), so an option added later is covered without touching this
test. A few samples are replaced by real things the server must reach or read: a free port,
a temporary data dir and SQLite file, a TLS certificate made here, a real redis-server, a
real mosquitto broker and the tiny Whisper model of tests/fixtures. The settings without an
option (``header_interval``, ``compat``) come from a ``--config`` file, as group tables.

The server must come up (https /healthz), print the effective settings it runs with
(``--log-level debug``: one JSON line, secrets masked) equal, setting by setting, to what was
asked, and show them where they act: TLS with our certificate, the token, the archive
format, the ack cadence, admission and REST limits, speech-to-text, the Redis bus, the
calls' limits.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from earshot.config import Option, options
from earshot.config.sources import MASK
from helpers import FIXTURES, free_port
from mqtt_helpers import Mosquitto
from redis_helpers import RedisServer

pytestmark = pytest.mark.slow


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by its own key: (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "earshot-every-option")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def expected(opt: Option, text: str) -> Any:
    """The setting ``text`` must become, as settings_to_json writes it."""
    value = (text,) if opt.kind.base is tuple else opt.from_text(text)
    if opt.meta.normalize is not None:
        value = opt.meta.normalize(value)
    return opt.to_json(value)


def test_serve_with_every_option_changed(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    broker = Mosquitto(tmp_path / "mqtt").start()
    cert, key = self_signed(tmp_path)
    port = free_port()
    real = {  # samples that must be real here; every other option takes its own sample
        "port": str(port), "data_dir": str(tmp_path / "data"),
        "db": str(tmp_path / "meta" / "earshot.db"), "certfile": str(cert),
        "keyfile": str(key), "bus": redis.url, "mqtt": broker.url + "/every-option",
        "asr_model": str(FIXTURES / "tiny-whisper"),
        "wyoming": f"tcp://127.0.0.1:{free_port()}", "icecast": f"127.0.0.1:{free_port()}",
    }
    (tmp_path / "meta").mkdir()
    texts = {opt.flat: real.get(opt.flat, opt.sample()) for opt in options()}
    argv: list[str] = []
    file_lines: dict[str, list[str]] = {}
    for opt in options():
        text = texts[opt.flat]
        if opt.flag is None:  # file-only: a group table of the config file
            literal = json.dumps(expected(opt, text))
            file_lines.setdefault(opt.group, []).append(f"{opt.name} = {literal}")
        elif opt.kind.base is bool:
            assert text == "true", opt.flat
            argv.append(opt.flag)
        else:
            argv += [opt.flag, text]
    config = tmp_path / "earshot.toml"
    config.write_text("".join(f"[{group}]\n" + "\n".join(lines) + "\n"
                              for group, lines in file_lines.items()))
    assert texts["log_level"] == "debug"  # (the settings line below needs it)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EARSHOT_")}
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "earshot.cli", "serve", "--config", str(config), *argv]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"https://127.0.0.1:{port}"
    try:
        health = _wait_healthy(proc, base, log)
        # -- the effective settings, as the server prints them --------------------------
        line = next(ln for ln in log.read_text().splitlines()
                    if ln.startswith("earshot settings: "))
        shown = json.loads(line.removeprefix("earshot settings: "))
        assert set(shown) == {opt.flat for opt in options()}
        for opt in options():
            want = MASK if opt.meta.redact == "all" else expected(opt, texts[opt.flat])
            assert shown[opt.flat] == want, opt.flat
            assert shown[opt.flat] != opt.to_json(opt.default), f"{opt.flat} is the default"
        for opt in options():  # (option names may say "secret"; their values never show)
            if opt.meta.redact == "all":
                assert texts[opt.flat] not in line, opt.flat
        assert texts["token"] not in line
        # -- where they act -----------------------------------------------------------------
        served = ssl.get_server_certificate(("127.0.0.1", port))
        assert _der(served) == _der(cert.read_text())  # --certfile, --keyfile
        token = texts["token"]
        assert httpx.get(base + "/api/streams", verify=False).status_code == 401  # --token
        assert httpx.get(base + "/api/streams", verify=False,
                         headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert health["auth"] is True
        assert health["archive_format"] == texts["archive_format"]
        assert health["default_processors"] == [texts["processors"]]
        assert health["ingest"] == {"ack_interval": float(texts["ack_interval"]),
                                    "ack_interval_min": float(texts["ack_interval"]),
                                    "ack_interval_max": float(texts["ack_interval_max"])}
        assert health["admission"]["max_streams"] == texts["max_streams"]
        assert health["storage"]["min_free_bytes"] == 1 << 20  # --min-free-space 1M
        assert health["rest"]["rate"] == float(texts["rest_rate"])
        assert health["rest"]["max_requests"] == int(texts["max_rest_requests"])
        assert health["bus"]["state"] == "ok"  # --bus: the real redis-server
        rooms = {"max_rooms": int(texts["max_rooms"]), "room_seats": int(texts["room_seats"]),
                 "room_grace": float(texts["room_grace"]),
                 "seat_grace": float(texts["seat_grace"])}
        assert health["rooms"] == rooms  # the calls' limits, as the rooms keep them
        assert httpx.get(base + "/api/rooms", verify=False, headers={
            "Authorization": f"Bearer {token}"}).json()["limits"] == rooms
        asr = health["asr"]
        assert asr["available"] and asr["engine"] == texts["asr_engine"]
        assert asr["model"] == texts["asr_model"]
        assert asr["batch"] == int(texts["asr_batch"])
        assert redis.client().ping()
        text = log.read_text()
        from earshot.integrations.mqtt import parse_mqtt_url

        assert f"mqtt: events to {parse_mqtt_url(texts['mqtt']).display}/<stream>" in text
        assert f"gateways: {texts['processes']} processes" in text
        assert "Traceback" not in text
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        broker.stop()
        redis.stop()


def _wait_healthy(proc: subprocess.Popen[bytes], base: str, log: Path,
                  timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"earshot serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            r = httpx.get(base + "/healthz", verify=False, timeout=2)
            if r.status_code == 200:
                body: dict[str, Any] = r.json()
                return body
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"earshot serve did not come up:\n{log.read_text()}")


def _der(pem: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem)


def test_serve_with_an_ack_interval_above_the_default_max(tmp_path: Path) -> None:
    """``earshot serve --ack-interval 0.5`` crashed (FrozenInstanceError): a fixed cadence."""
    from helpers import ServerProcess

    srv = ServerProcess(tmp_path / "data", "--ack-interval", "0.5").start()
    try:
        ingest = httpx.get(srv.http + "/healthz").json()["ingest"]
        assert ingest == {"ack_interval": 0.5, "ack_interval_min": 0.5, "ack_interval_max": 0.5}
    finally:
        srv.stop()
    assert "Traceback" not in srv.log.read_text()
