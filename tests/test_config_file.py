"""`earshot serve --config FILE` / EARSHOT_CONFIG: TOML keys = options; CLI > env > file
(config.py). (A real server started each way: tests/e2e/test_config_file_server.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from earshot.config import (
    Settings,
    env_overrides,
    load_config_file,
    merge_settings,
    parse_config_file,
)
from earshot.errors import ConfigError
from helpers import ROOT

EXAMPLE = ROOT / "examples" / "earshot.toml"


def test_the_committed_example_loads_and_names_every_option() -> None:
    opts = load_config_file(EXAMPLE)
    settings = merge_settings(opts)
    assert settings.port == 8000
    assert settings.data_dir == Path("./earshot-data")
    assert settings.processors == ("level", "vad,threshold=0.5")
    assert settings.max_lag == 10.0 and isinstance(settings.max_lag, float)
    # every setting with a command-line option appears in the file (set or commented out)
    text = EXAMPLE.read_text()
    from dataclasses import fields

    for f in fields(Settings):
        assert f"{f.name} =" in text, f"{f.name} is missing from examples/earshot.toml"


def test_precedence_is_command_line_then_environment_then_file() -> None:
    file = parse_config_file('port = 9001\nhost = "127.0.0.1"\nprocessors = ["level", "vad"]\n'
                             'max_lag = 3\n')
    env = env_overrides({"EARSHOT_PORT": "9002", "EARSHOT_MAX_LAG": "4.5"})
    cli = {"port": 9003}
    s = merge_settings(file, env, cli)
    assert (s.port, s.max_lag, s.processors) == (9003, 4.5, ("level", "vad"))
    s = merge_settings(file, env, {})
    assert (s.port, s.max_lag) == (9002, 4.5)
    s = merge_settings(file)
    assert (s.port, s.max_lag) == (9001, 3.0)


@pytest.mark.parametrize(("text", "needle"), [
    ("prot = 8000\n", "unknown key 'prot'"),
    ("data-dir = 'x'\n", "unknown key 'data-dir' (did you mean 'data_dir'?)"),
    ("port = '8000'\n", "config key 'port' must be an integer"),
    ("fsync = 1\n", "config key 'fsync' must be true or false"),
    ("processors = 'level'\nmax_lag = 'x'\n", "config key 'max_lag' must be a number"),
    ("processors = [1]\n", "config key 'processors' must be a list of strings"),
    ("port = \n", "not valid TOML"),
    ("[server]\nport = 1\n", "unknown key 'server'"),
])
def test_bad_files_are_errors_that_name_the_key(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config_file(text, "x.toml")
    assert needle in str(err.value)
    assert str(err.value).startswith("x.toml: ")


def test_a_single_string_is_a_one_item_list_and_settings_still_validate() -> None:
    assert parse_config_file('processors = "vad"')["processors"] == ("vad",)
    with pytest.raises(ConfigError, match="archive format"):
        merge_settings(parse_config_file('archive_format = "mp3"'))


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_file(tmp_path / "nope.toml")
