"""Helpers for the end-to-end tests of the guard, TLS, nginx and MQTT over TLS: raw WebSocket
handshakes, TLS certificates, nginx."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
from pathlib import Path
from typing import Any


def handshake(port: int, path: str, *, origin: str | None = None, host: str | None = None,
              extra: dict[str, str] | None = None, source: str | None = None,
              timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send one WebSocket upgrade request by hand; (status, headers, body) of the answer.
    A 101 answer is closed right away (only the verdict on the handshake matters)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}",
             "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
             "Sec-WebSocket-Version: 13"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                  source_address=(source, 0) if source else None) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *hdrs = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in hdrs)}
        status = int(status_line.split()[1])
        want = int(headers.get("content-length", "0")) if status != 101 else 0
        while len(body) < want:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    return status, headers, body


def error_body(body: bytes) -> dict[str, Any]:
    return json.loads(body.decode())


def make_ca(tmp: Path, name: str) -> tuple[Path, Any, Any]:
    """A self-signed CA: (its PEM path, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = tmp / f"{name}-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def make_server_cert(tmp: Path, ca_cert: Any, ca_key: Any,
                     names: tuple[str, ...] = ("localhost", "127.0.0.1")) -> tuple[Path, Path]:
    """A server certificate for ``names`` signed by the CA: (cert PEM path, key PEM path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = tmp / "server.pem", tmp / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def client_context(cafile: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))


class TlsServer:
    """``earshot serve`` with TLS (a :class:`helpers.ServerProcess` probed over https)."""

    def __new__(cls, data_dir: Path, cafile: Path, *args: str,
                env: dict[str, str] | None = None) -> Any:
        import subprocess
        import sys
        import time

        import httpx

        from helpers import ServerProcess

        class _Tls(ServerProcess):
            @property
            def url(self) -> str:
                return f"wss://127.0.0.1:{self.port}/ws"

            @property
            def http(self) -> str:
                return f"https://127.0.0.1:{self.port}"

            def start(self, timeout: float = 30.0) -> ServerProcess:
                cmd = [sys.executable, "-m", "earshot.cli", "serve", "--port", str(self.port),
                       "--data-dir", str(self.data_dir), "--log-level", "warning", *self.args]
                logf = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
                self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                             env=self.env)
                ctx = client_context(cafile)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"server exited: {self.log.read_text()}")
                    try:
                        if httpx.get(self.http + "/healthz", verify=ctx,
                                     timeout=1).status_code == 200:
                            return self
                    except httpx.TransportError:
                        pass
                    time.sleep(0.05)
                self.stop()
                raise RuntimeError(f"server did not come up: {self.log.read_text()}")

        return _Tls(data_dir, *args, env=env)


class Nginx:
    """A real nginx on free loopback ports, running the committed ``deploy/nginx.conf`` with
    only its ports, names, certificate and log paths changed (``-p DIR``, own pid and logs)."""

    def __init__(self, tmp: Path, upstream_port: int, cert: Path, key: Path,
                 shutdown_timeout: int = 2) -> None:
        from helpers import ROOT, free_port, require_tool

        self.exe = require_tool("nginx")
        self.dir = tmp
        self.http_port, self.https_port = free_port(), free_port()
        site = (ROOT / "deploy" / "nginx.conf").read_text()
        for old, new in [
            ("listen 443 ssl;", f"listen 127.0.0.1:{self.https_port} ssl;"),
            ("listen [::]:443 ssl;", ""),
            ("listen 80;", f"listen 127.0.0.1:{self.http_port};"),
            ("listen [::]:80;", ""),
            ("server_name audio.example.com;", "server_name 127.0.0.1 localhost;"),
            ("/etc/letsencrypt/live/audio.example.com/fullchain.pem", str(cert)),
            ("/etc/letsencrypt/live/audio.example.com/privkey.pem", str(key)),
            ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};"),
            ("/var/log/nginx/", f"{tmp}/"),
        ]:
            assert old in site, f"deploy/nginx.conf no longer has {old!r}"
            site = site.replace(old, new)
        (tmp / "earshot.conf").write_text(site)
        temp = "\n".join(f"  {k}_temp_path {tmp}/{k};"
                         for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        self.conf = tmp / "nginx.conf"
        self.conf.write_text(f"""
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
worker_shutdown_timeout {shutdown_timeout}s;
events {{ worker_connections 512; }}
http {{
{temp}
  access_log {tmp}/access.log;
  include {tmp}/earshot.conf;
}}
""")
        self.proc: Any = None

    def _cmd(self, *extra: str) -> list[str]:
        return [self.exe, "-p", str(self.dir), "-c", str(self.conf),
                "-e", str(self.dir / "error.log"), *extra]

    def start(self, timeout: float = 20.0) -> Nginx:
        import subprocess
        import time

        log = open(self.dir / "stderr.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(self._cmd("-g", "daemon off;"), stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("nginx exited: " + (self.dir / "error.log").read_text())
            try:
                socket.create_connection(("127.0.0.1", self.https_port), 1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not come up: " + (self.dir / "error.log").read_text())

    def reload(self) -> None:
        import subprocess

        subprocess.run(self._cmd("-s", "reload"), check=True, capture_output=True, timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)

    @property
    def access_log(self) -> str:
        return "".join(p.read_text() for p in self.dir.glob("*access.log"))
