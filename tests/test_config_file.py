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
    option,
    options,
    parse_config_file,
)
from earshot.errors import ConfigError
from helpers import ROOT

EXAMPLE = ROOT / "examples" / "earshot.toml"


def test_the_committed_example_loads_and_names_every_option() -> None:
    opts = load_config_file(EXAMPLE)
    settings = merge_settings(opts)
    assert settings.server.port == 8000
    assert settings.server.data_dir == Path("./earshot-data")
    assert settings.processing.processors == ("level", "vad,threshold=0.5")
    assert settings.processing.max_lag == 10.0 and isinstance(settings.processing.max_lag, float)
    # every setting appears in the file (set or commented out), and what it sets is the
    # default (the example cannot drift from the settings), but for its two processors
    text = EXAMPLE.read_text()
    for opt in options():
        assert f"{opt.flat} =" in text, f"{opt.flat} is missing from examples/earshot.toml"
    for key, value in opts.items():
        if key not in ("processors", "data_dir"):
            assert value == option(key).default, f"examples/earshot.toml: {key} = {value!r}"


def test_precedence_is_command_line_then_environment_then_file() -> None:
    file = parse_config_file('port = 9001\nhost = "127.0.0.1"\nprocessors = ["level", "vad"]\n'
                             'max_lag = 3\n')
    env = env_overrides({"EARSHOT_PORT": "9002", "EARSHOT_MAX_LAG": "4.5"})
    cli = {"port": 9003}

    def seen(s: Settings) -> tuple[object, ...]:
        return s.server.port, s.processing.max_lag, s.processing.processors

    assert seen(merge_settings(file, env, cli)) == (9003, 4.5, ("level", "vad"))
    assert seen(merge_settings(file, env, {})) == (9002, 4.5, ("level", "vad"))
    assert seen(merge_settings(file)) == (9001, 3.0, ("level", "vad"))


@pytest.mark.parametrize(("text", "needle"), [
    ("prot = 8000\n", "unknown key 'prot'"),
    ("data-dir = 'x'\n", "unknown key 'data-dir' (did you mean 'data_dir'?)"),
    ("port = '8000'\n", "config key 'port' must be an integer"),
    ("fsync = 1\n", "config key 'fsync' must be true or false"),
    ("processors = 'level'\nmax_lag = 'x'\n", "config key 'max_lag' must be a number"),
    ("processors = [1]\n", "config key 'processors' must be a list of strings"),
    ("port = \n", "not valid TOML"),
    ("[servre]\nport = 1\n", "unknown key 'servre' (did you mean 'server'?)"),
    ("[server]\nprot = 1\n", "unknown key 'server.prot' (did you mean 'port'?)"),
    ("[archive]\nformat = 'flac'\narchive_format = 'wav'\n", "'archive_format' is given twice"),
    ("archive_format = 'flac'\narchive.format = 'wav'\n", "'archive_format' is given twice"),
    ("server = 1\n", "unknown key 'server'"),
    ("min_free_space = 'lots'\n", "config key 'min_free_space' 'lots' is not a size"),
])
def test_bad_files_are_errors_that_name_the_key(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config_file(text, "x.toml")
    assert needle in str(err.value)
    assert str(err.value).startswith("x.toml: ")


def test_group_tables_and_dotted_keys_are_the_flat_keys() -> None:
    flat = parse_config_file('archive_format = "flac"\nack_interval = 0.5\nasr_model = "m"\n'
                             'min_free_space = "1G"\nmqtt = "mqtt://h"\n')
    grouped = parse_config_file('[archive]\nformat = "flac"\n[ingest]\nack_interval = 0.5\n'
                                '[asr]\nasr_model = "m"\n[admission]\n'
                                'min_free_space = 1073741824\n[mqtt]\nurl = "mqtt://h"\n')
    dotted = parse_config_file('archive.format = "flac"\ningest.ack_interval = 0.5\n'
                               'asr.model = "m"\nadmission.min_free_space = "1G"\n'
                               'mqtt.url = "mqtt://h"\n')
    assert flat == grouped == dotted == {
        "archive_format": "flac", "ack_interval": 0.5, "asr_model": "m",
        "min_free_space": 1 << 30, "mqtt": "mqtt://h"}
    s = merge_settings(grouped)
    assert (s.archive.format, s.ingest.ack_interval, s.asr.model, s.mqtt.url) == (
        "flac", 0.5, "m", "mqtt://h")


def test_a_single_string_is_a_one_item_list_and_settings_still_validate() -> None:
    assert parse_config_file('processors = "vad"')["processors"] == ("vad",)
    with pytest.raises(ConfigError, match="archive format"):
        merge_settings(parse_config_file('archive_format = "mp3"'))


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_file(tmp_path / "nope.toml")
