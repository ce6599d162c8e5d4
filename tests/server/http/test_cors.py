"""/web/* (earshot.js and its modules) is readable from other sites: CORS on the static files
only, with the allowed origins configurable (--web-origins, EARSHOT_WEB_ORIGINS). The setting
here; the headers a real server sends: tests/e2e/test_cors_server.py."""

from __future__ import annotations

import pytest

from earshot.config import Settings, env_overrides
from earshot.errors import ConfigError


def test_web_origins_setting() -> None:
    assert Settings().web_origins == ("*",)
    assert Settings(web_origins=("none",)).web_origins == ()
    assert Settings(web_origins=("https://a.example, http://b.example:8080",)).web_origins == (
        "https://a.example", "http://b.example:8080")
    env = env_overrides({"EARSHOT_WEB_ORIGINS": "https://a.example;https://b.example"})
    assert Settings(**env).web_origins == ("https://a.example", "https://b.example")
    for bad in ("https://a.example/", "a.example", "https://a.example/path"):
        with pytest.raises(ConfigError, match="scheme://host"):
            Settings(web_origins=(bad,))
