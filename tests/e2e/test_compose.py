"""deploy/compose.yaml: valid for podman-compose, and every service's command, flags,
variables, ports and health checks exist in (and work with) the image built from this
checkout.

The third-party images (redis, postgres, minio, nginx) cannot be pulled here, so their own
health-check tools (redis-cli, pg_isready, mc, curl) are not run; nginx's configuration is
checked by the host's nginx (`nginx -t`). Everything the compose file asks of earshot's
image is run in that image: `earshot serve` and `earshot worker` with the file's variables
against a real Redis, both health checks (the worker's passes only once it heartbeats), and
the one-shot bucket creation against a real S3 server (moto).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from container_helpers import ROOT, SANDBOX_FLAGS, BuiltImage, need_tools, podman

from earshot.config import options
from earshot.processors.registry import BUILTINS
from helpers import free_port
from redis_helpers import RedisServer
from s3_helpers import MotoServer

COMPOSE = ROOT / "deploy" / "compose.yaml"
NGINX = ROOT / "deploy" / "nginx-compose.conf"
EARSHOT_SERVICES = {"gateway1", "gateway2", "worker-vad-level", "worker-asr", "bucket"}
SERVICES = EARSHOT_SERVICES | {"redis", "postgres", "minio", "nginx"}
# EARSHOT_* variables the compose file may set ahead of their settings (none now)
PENDING_SETTINGS: set[str] = set()


def compose_config(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("podman-compose") or str(Path(sys.executable).parent
                                                 / "podman-compose")
    if not Path(exe).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("podman-compose is not installed (pip install podman-compose)")
        pytest.skip("podman-compose is not installed (pip install podman-compose)")
    full = {k: v for k, v in os.environ.items() if k != "EARSHOT_TOKEN"}
    return subprocess.run([exe, "-f", str(COMPOSE), "config"], capture_output=True, text=True,
                          env={**full, **(env or {})}, timeout=60)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    need_tools("podman")
    out = compose_config({"EARSHOT_TOKEN": "compose-test-token"})
    assert out.returncode == 0, out.stderr
    return dict(yaml.safe_load(out.stdout))


def test_the_compose_file_is_valid_and_wires_the_cluster(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == SERVICES
    # the token is required: no cluster open to anyone by default
    refused = compose_config()
    assert refused.returncode != 0 and "EARSHOT_TOKEN" in refused.stderr
    # start order: each waits for what it needs to be healthy (or done)
    needs = {name: {d: c["condition"] for d, c in s.get("depends_on", {}).items()}
             for name, s in services.items()}
    for gw in ("gateway1", "gateway2"):
        assert needs[gw] == {"redis": "service_healthy", "postgres": "service_healthy",
                             "bucket": "service_completed_successfully"}
        assert services[gw]["command"] == ["serve"]
    assert needs["nginx"] == {"gateway1": "service_healthy", "gateway2": "service_healthy"}
    assert needs["bucket"] == {"minio": "service_healthy"}
    for w in ("worker-vad-level", "worker-asr"):
        assert needs[w] == {"redis": "service_healthy"}
    # health checks everywhere but the one-shot job
    for name, s in services.items():
        check = s.get("healthcheck", {})
        if name == "bucket":
            assert check.get("disable") is True
        else:
            assert check.get("test") and check["test"][0] == "CMD", name
    # earshot's processes: one image, a planned stop's time, their data of their own
    for name in EARSHOT_SERVICES:
        s = services[name]
        assert s["image"] == "localhost/earshot:latest"
        assert s["build"]["dockerfile"] == "Containerfile"
        assert Path(s["build"]["context"]).resolve() == ROOT
        assert _seconds(s["stop_grace_period"]) >= 30
    assert services["gateway1"]["volumes"] != services["gateway2"]["volumes"]
    # every EARSHOT_* variable is a setting (or the config file)
    known = {o.flat.upper() for o in options()} | {"CONFIG"}
    for name in EARSHOT_SERVICES:
        for var in services[name].get("environment", {}):
            if var.startswith("EARSHOT_"):
                assert var[8:] in known | PENDING_SETTINGS, (name, var)
    # nginx: port 8000 outside, 80 inside, both gateways upstream on the port they serve
    assert services["nginx"]["ports"] == ["8000:80"]
    mounted = services["nginx"]["volumes"][0].split(":")[0]
    assert (COMPOSE.parent / mounted).resolve() == NGINX  # (relative to the file)
    conf = NGINX.read_text()
    assert re.search(r"^\s*listen 80;", conf, re.M)
    upstream = set(re.findall(r"^\s*server (\S+):(\d+)", conf, re.M))
    assert upstream == {("gateway1", "8000"), ("gateway2", "8000")}


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(text))
    assert m, text
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def test_the_nginx_variant_passes_nginx_t(tmp_path: Path) -> None:
    need_tools("nginx")
    conf = NGINX.read_text().replace("gateway1:8000", "127.0.0.1:8000").replace(
        "gateway2:8000", "127.0.0.1:8001")  # (the compose names resolve only in compose)
    conf = conf.replace("/var/log/nginx/access.log", str(tmp_path / "access.log"))
    conf = re.sub(r"listen (\[::\]:)?80;", lambda m: f"listen {m.group(1) or ''}{free_port()};",
                  conf)
    main = tmp_path / "nginx.conf"
    main.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
                    f"events {{}}\nhttp {{\n{conf}\n}}\n")
    out = subprocess.run(["nginx", "-t", "-c", str(main), "-p", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def _help(image: BuiltImage, sub: str) -> str:
    return podman("run", "--rm", *SANDBOX_FLAGS, image.tag, sub, "--help").stdout


def _check_argv(test: list[str]) -> list[str]:
    assert test[0] == "CMD"
    return list(test[1:])


@pytest.mark.slow
def test_what_compose_runs_exists_and_works_in_the_image(
        config: dict[str, Any], earshot_image: BuiltImage, tmp_path: Path) -> None:
    services = config["services"]
    image = json.loads(podman("image", "inspect", earshot_image.tag).stdout)[0]["Config"]
    assert "8000/tcp" in image["ExposedPorts"]  # what nginx's upstream and EXPOSE agree on
    # the flags and processors the commands use
    helps = {sub: _help(earshot_image, sub) for sub in ("serve", "worker")}
    for name in ("gateway1", "gateway2", "worker-vad-level", "worker-asr"):
        sub, *args = services[name]["command"]
        for arg in args:
            if arg.startswith("--"):
                assert re.search(rf"\s{re.escape(arg.split('=')[0])}\b", helps[sub]), (name, arg)
            elif sub == "worker":
                assert arg.split(",")[0] in {*BUILTINS, "asr"}, (name, arg)
    # the extras the services' variables need (PostgreSQL, Redis, S3) are installed
    podman("run", "--rm", *SANDBOX_FLAGS, "--entrypoint", "python3", earshot_image.tag, "-c",
           "import psycopg, psycopg_pool, redis, boto3, av")

    redis = RedisServer(tmp_path / "redis").start()
    moto = MotoServer(tmp_path / "moto").start()
    started: list[str] = []
    try:
        _run_bucket_job(services["bucket"], earshot_image, moto)
        _run_worker_and_its_check(services["worker-vad-level"], earshot_image, redis, started)
        _run_gateway_and_its_check(services["gateway1"], earshot_image, redis, started)
    finally:
        for name in started:
            podman("rm", "-f", "-t", "0", name, check=False)
        moto.stop()
        redis.stop()


def _env_args(env: dict[str, str]) -> list[str]:
    return [a for k, v in env.items() for a in ("-e", f"{k}={v}")]


def _run_bucket_job(svc: dict[str, Any], image: BuiltImage, moto: MotoServer) -> None:
    env = {**svc["environment"], **moto.env()}  # the compose variables, aimed at moto
    env.pop("AWS_ENDPOINT_URL_S3", None)
    args = ["run", "--rm", *SANDBOX_FLAGS, *_env_args(env),
            "--entrypoint", svc["entrypoint"][0], image.tag, *svc["entrypoint"][1:],
            *svc["command"]]
    for _ in range(2):  # creates the bucket, then finds it (a restarted stack)
        out = podman(*args)
        assert "bucket earshot ready" in out.stdout
    names = [b["Name"] for b in moto.raw().list_buckets()["Buckets"]]
    assert "earshot" in names


def _run_worker_and_its_check(svc: dict[str, Any], image: BuiltImage, redis: RedisServer,
                              started: list[str]) -> None:
    env = {**svc["environment"], "EARSHOT_BUS": redis.url}
    check = _check_argv(svc["healthcheck"]["test"])
    probe = ["run", "--rm", *SANDBOX_FLAGS, *_env_args(env), "--entrypoint", check[0],
             image.tag, *check[1:]]
    assert podman(*probe, check=False).returncode == 1  # no worker heartbeats yet
    name = f"earshot-worker-{os.getpid()}-{redis.port}"
    podman("run", "-d", "--name", name, *SANDBOX_FLAGS, *_env_args(env), image.tag,
           *svc["command"])
    started.append(name)
    deadline = time.monotonic() + 60
    while podman("exec", name, *check, check=False).returncode != 0:
        assert time.monotonic() < deadline, podman("logs", name, check=False).stderr[-2000:]
        time.sleep(0.5)
    kinds = {k.decode().rsplit(":", 1)[-1] for k in redis.client().scan_iter("earshot:workers:*")}
    assert kinds == {"vad", "level"}


def _run_gateway_and_its_check(svc: dict[str, Any], image: BuiltImage, redis: RedisServer,
                               started: list[str]) -> None:
    port = free_port()
    env = {k: v for k, v in svc["environment"].items()
           if k not in ("EARSHOT_DB", "EARSHOT_ARCHIVE_STORE") and not k.startswith("AWS_")}
    env.update({"EARSHOT_BUS": redis.url, "EARSHOT_PORT": str(port)})
    name = f"earshot-gateway-{os.getpid()}-{port}"
    podman("run", "-d", "--name", name, *SANDBOX_FLAGS, *_env_args(env), image.tag,
           *svc["command"])
    started.append(name)
    check = _check_argv(svc["healthcheck"]["test"])
    deadline = time.monotonic() + 90
    while podman("exec", name, *check, check=False).returncode != 0:
        assert time.monotonic() < deadline, podman("logs", name, check=False).stderr[-2000:]
        time.sleep(0.5)
    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
    assert health["status"] == "ok" and health["bus"]["state"] == "ok"
    assert health["default_processors"] == ["level", "vad"]


def test_the_build_files_agree() -> None:
    """docker reads .dockerignore, podman .containerignore: the same context either way; and
    the Containerfile's defaults are what docs/deploy.md and the issue say."""
    assert (ROOT / ".dockerignore").read_text() == (ROOT / ".containerignore").read_text()
    text = (ROOT / "Containerfile").read_text()
    assert "ARG BASE=debian:bookworm-slim" in text
    assert re.search(r"^EXPOSE 8000 10300 8010$", text, re.M)
    assert re.search(r"^VOLUME /data$", text, re.M) and re.search(r"^USER earshot$", text, re.M)
