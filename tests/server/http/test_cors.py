"""/web/* (earshot.js and its modules) is readable from other sites: CORS on the static files
only, with the allowed origins configurable (--web-origins, EARSHOT_WEB_ORIGINS). The setting
here; the headers a real server sends: tests/e2e/test_cors_server.py."""

from __future__ import annotations

import pytest

from earshot.config import Settings, env_overrides
from earshot.errors import ConfigError


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
