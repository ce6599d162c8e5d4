"""/web/* (earshot.js and its modules) is readable from other sites: CORS on the static files
only, with the allowed origins configurable (--web-origins, EARSHOT_WEB_ORIGINS)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from earshot.config import Settings, env_overrides
from earshot.errors import ConfigError
from helpers import ServerProcess

SITE = "http://127.0.0.1:9999"


def test_static_files_allow_any_origin_by_default(shared_server: ServerProcess) -> None:
    r = httpx.get(f"{shared_server.http}/web/earshot.js", headers={"Origin": SITE})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    assert "export" in r.text and r.headers["content-type"].startswith(
        ("text/javascript", "application/javascript"))
    for module in ("speech.js", "recorder.js", "capture-worklet.js", "player-worklet.js",
                   "jitter.js"):
        r = httpx.get(f"{shared_server.http}/web/{module}", headers={"Origin": SITE})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*", module
    # a preflight, for a page that adds its own headers to the fetch
    r = httpx.options(f"{shared_server.http}/web/earshot.js", headers={
        "Origin": SITE, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "x-trace"})
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
    assert r.headers["access-control-allow-headers"] == "x-trace"
    # only the static files: the API and the page itself are unchanged
    for path in ("/api/streams", "/healthz", "/"):
        r = httpx.get(f"{shared_server.http}{path}", headers={"Origin": SITE})
        assert "access-control-allow-origin" not in r.headers, path
    # no Origin (a same-site load): no header needed, none sent
    r = httpx.get(f"{shared_server.http}/web/earshot.js")
    assert "access-control-allow-origin" not in r.headers


def test_allowed_origins_are_configurable(server_factory: Callable[..., Any]) -> None:
    other = "https://app.example.com"
    srv = server_factory("--web-origins", f"{SITE}, {other}")
    for origin in (SITE, other):
        r = httpx.get(f"{srv.http}/web/earshot.js", headers={"Origin": origin})
        assert r.headers["access-control-allow-origin"] == origin
        assert "origin" in r.headers["vary"].lower()
    r = httpx.get(f"{srv.http}/web/earshot.js", headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = httpx.options(f"{srv.http}/web/earshot.js", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


def test_web_origins_setting() -> None:
    assert Settings().security.web_origins == ("*",)
    assert Settings.of(web_origins=("none",)).security.web_origins == ()
    assert Settings.of(web_origins=("https://a.example, http://b.example:8080",)
                       ).security.web_origins == ("https://a.example", "http://b.example:8080")
    env = env_overrides({"EARSHOT_WEB_ORIGINS": "https://a.example;https://b.example"})
    assert Settings.of(**env).security.web_origins == ("https://a.example", "https://b.example")
    for bad in ("https://a.example/", "a.example", "https://a.example/path"):
        with pytest.raises(ConfigError, match="scheme://host"):
            Settings.of(web_origins=(bad,))


def test_bad_web_origins_option_is_a_clear_usage_error(tmp_path: Any) -> None:
    import subprocess
    import sys

    out = subprocess.run([str(Path(sys.executable).parent / "earshot"), "serve", "--data-dir",
                          str(tmp_path), "--web-origins", "example.com"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert "web origin 'example.com'" in out.stderr and "Traceback" not in out.stderr
