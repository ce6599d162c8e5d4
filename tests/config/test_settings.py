"""The settings, declared once (earshot.config): every generator that reads the declarations
(``earshot serve``'s options and --help, EARSHOT_* variables, TOML keys, JSON, the docs'
table) agrees with the others, and the names users type have not changed."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from earshot.cli import build_parser
from earshot.config import (
    GROUPS,
    IngestSettings,
    Option,
    Settings,
    env_overrides,
    merge_settings,
    option,
    options,
    parse_config_file,
    settings_from_json,
    settings_to_json,
)
from earshot.config.cli import cli_overrides, option_help
from earshot.config.sources import MASK
from earshot.errors import ConfigError
from earshot.server.testing import Gateway

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

# What users type (README, docs, scripts, deployments): these must never change by accident.
FLAT_NAMES = [
    "host", "port", "data_dir", "db", "log_level", "processes", "token", "no_auth",
    "web_origins", "allowed_origins", "forwarded_allow_ips", "conn_rate", "conn_burst",
    "auth_fail_rate", "auth_fail_burst", "token_secret", "auth_timeout", "max_preauth",
    "max_preauth_per_address", "header_timeout", "certfile", "keyfile", "archive_format",
    "archive_part", "fsync", "header_interval", "archive_store", "archive_store_endpoint",
    "archive_store_region", "archive_store_access_key_id", "archive_store_secret_access_key",
    "archive_keep_local", "ack_interval", "ack_interval_max",
    "max_message_bytes", "compat", "processors", "filters", "filter_processors", "max_lag",
    "drain_timeout", "max_processors", "asr_model", "asr_engine", "asr_device",
    "asr_compute_type",
    "asr_language", "asr_beam_size", "asr_workers", "asr_threads", "asr_batch",
    "asr_final",
    "max_streams", "max_cpu", "max_subscribers", "rest_rate", "rest_burst",
    "max_rest_requests", "max_rest_per_client", "rest_send_timeout", "max_loop_lag",
    "max_ack_latency", "min_free_space", "bus",
    "bus_retention", "mqtt", "upload_limit", "wyoming", "wyoming_allow", "icecast",
    "max_rooms", "room_seats", "room_grace", "seat_grace",
]
FILE_ONLY = {"header_interval", "compat", "archive_store_access_key_id",
             "archive_store_secret_access_key"}
FLAG_OF = {"processors": "--processor"}  # where the flag is not --flat-name


def serve_parser() -> argparse.ArgumentParser:
    for action in build_parser()._actions:  # (argparse has no public list of subparsers)
        if isinstance(action.choices, dict) and "serve" in action.choices:
            parser: argparse.ArgumentParser = action.choices["serve"]
            return parser
    raise LookupError("no serve command")


def sample(opt: Option) -> Any:
    """``opt``'s sample as a typed value (what every source must turn it into)."""
    text = opt.sample()
    return (text,) if opt.kind.base is tuple else opt.from_text(text)


def samples() -> dict[str, Any]:
    return {opt.flat: sample(opt) for opt in options()}


def argv_of(values: dict[str, str]) -> list[str]:
    """``earshot serve`` arguments setting every option in ``values`` (flat -> text)."""
    argv = []
    for flat, text in values.items():
        opt = option(flat)
        if opt.flag is None:
            continue
        if opt.kind.base is bool:
            assert text == "true", flat  # (every flag is off by default)
            argv.append(opt.flag)
        else:
            argv += [opt.flag, text]
    return argv


def toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    if isinstance(value, Path):
        return json.dumps(str(value))
    return json.dumps(value)


# -- the declarations ---------------------------------------------------------------------
def test_the_names_users_type_are_unchanged() -> None:
    assert [o.flat for o in options()] == FLAT_NAMES
    for opt in options():
        assert opt.env == "EARSHOT_" + opt.flat.upper()
        want = None if opt.flat in FILE_ONLY else FLAG_OF.get(
            opt.flat, "--" + opt.flat.replace("_", "-"))
        assert opt.flag == want, opt.flat
    assert len({o.path for o in options()}) == len(FLAT_NAMES)
    assert [f for f in GROUPS] == ["server", "security", "tls", "archive", "ingest",
                                   "processing", "asr", "admission", "bus", "mqtt", "doors",
                                   "rooms"]


@pytest.mark.parametrize("opt", options(), ids=lambda o: o.flat)
def test_every_setting_has_help_a_rule_and_a_valid_sample(opt: Option) -> None:
    assert len(opt.help) > 10 and opt.help == opt.help.strip()
    # a range, choices, or a type that says what it takes
    assert (opt.meta.range or opt.meta.choices
            or opt.kind.base in (bool, str, Path, tuple)), opt.flat
    if opt.kind.base in (int, float):
        assert opt.meta.range is not None, f"{opt.flat}: a number needs a range"
    assert opt.problem(opt.default) is None, f"{opt.flat}: its default is out of its range"
    value = sample(opt)
    assert value != opt.default, opt.flat
    assert opt.problem(value) is None, opt.flat


def test_groups_are_frozen_and_read_by_group() -> None:
    s = Settings.of(ack_interval=0.05, archive_format="flac", asr_model="m", bus_retention=5)
    assert (s.ingest.ack_interval, s.archive.format, s.asr.model, s.bus.retention) == (
        0.05, "flac", "m", 5.0)
    with pytest.raises(AttributeError):
        s.ingest.ack_interval = 0.2  # type: ignore[misc]
    with pytest.raises(ConfigError, match="unknown setting 'ack_intervall'"):
        Settings.of(ack_intervall=0.2)
    assert s.replace(port=9001).server.port == 9001 and s.server.port == 8000
    assert s.changed() == {"ack_interval": 0.05, "archive_format": "flac", "asr_model": "m",
                           "bus_retention": 5.0}


def test_an_ack_interval_above_the_default_max_fixes_the_cadence() -> None:
    """``--ack-interval 0.5`` crashed with FrozenInstanceError: the maximum is now derived."""
    s = Settings.of(ack_interval=0.5)
    assert (s.ingest.ack_interval, s.ingest.ack_interval_max) == (0.5, 0.25)  # as given
    assert s.ingest.ack_interval_ceiling == 0.5
    assert IngestSettings(ack_interval=0.05).ack_interval_ceiling == 0.25
    ns = serve_parser().parse_args(["--ack-interval", "0.5"])
    assert merge_settings(cli=cli_overrides(ns)).ingest.ack_interval_ceiling == 0.5


async def test_the_hub_runs_a_fixed_cadence_from_a_large_ack_interval() -> None:
    async with Gateway(ack_interval=0.5) as gw:
        assert (gw.hub.load.cadence.base, gw.hub.load.cadence.most) == (0.5, 0.5)
        assert not gw.hub.load.cadence.adaptive
    async with Gateway(ack_interval=0.05, ack_interval_max=0.3) as gw:
        assert (gw.hub.load.cadence.base, gw.hub.load.cadence.most) == (0.05, 0.3)


async def test_the_call_limits_reach_the_rooms() -> None:
    """``--max-rooms``, ``--room-seats``, ``--room-grace``, ``--seat-grace`` (each layer: the
    command line over the environment over the file) become the gateway's RoomLimits."""
    from earshot.rooms.room import RoomLimits
    from earshot.server.rooms.service import RoomService, room_limits

    ns = serve_parser().parse_args(["--max-rooms", "3", "--room-seats", "2",
                                    "--room-grace", "5"])
    s = merge_settings(parse_config_file("[rooms]\nseats = 4\ngrace = 60\nseat_grace = 1\n"),
                       env_overrides({"EARSHOT_SEAT_GRACE": "2.5"}), cli_overrides(ns))
    want = RoomLimits(max_seats=2, max_rooms=3, grace=5.0, seat_grace=2.5)
    assert room_limits(s.rooms) == want
    assert room_limits(Settings().rooms) == RoomLimits()  # the defaults are the core's
    async with Gateway(**{k: v for k, v in s.changed().items() if k != "data_dir"}) as gw:
        assert RoomService(gw.hub).limits == want


# -- the generators agree -----------------------------------------------------------------
def test_command_line_environment_toml_and_json_give_equal_settings() -> None:
    texts = {opt.flat: opt.sample() for opt in options()}
    want = samples()
    # the command line (the file-only settings come from the environment)
    ns = serve_parser().parse_args(argv_of(texts))
    file_only_env = {option(k).env: texts[k] for k in FILE_ONLY}
    from_cli = merge_settings(env=env_overrides(file_only_env), cli=cli_overrides(ns))
    assert from_cli.flat() == want
    assert from_cli.changed() == want  # every setting differs from its default
    # the environment alone
    from_env = merge_settings(env=env_overrides({option(k).env: v for k, v in texts.items()}))
    # TOML: flat keys, group tables, dotted keys
    flat_toml = "\n".join(f"{k} = {toml_literal(v)}" for k, v in want.items())
    tables = []
    for group in GROUPS:
        tables.append(f"[{group}]")
        tables += [f"{o.name} = {toml_literal(want[o.flat])}" for o in options()
                   if o.group == group]
    dotted = "\n".join(f"{option(k).path} = {toml_literal(v)}" for k, v in want.items())
    from_files = [merge_settings(parse_config_file(text))
                  for text in (flat_toml, "\n".join(tables), dotted)]
    # JSON (the gateway processes of --processes N)
    from_json = settings_from_json(settings_to_json(from_cli))
    assert from_env == from_cli == from_json
    assert all(s == from_cli for s in from_files)


def test_layers_override_one_setting_at_a_time() -> None:
    ns = serve_parser().parse_args(["--archive-format", "ogg", "--max-streams", "3"])
    s = merge_settings(parse_config_file('[archive]\nformat = "flac"\nfsync = true\n'),
                       env_overrides({"EARSHOT_FSYNC": "false", "EARSHOT_ARCHIVE_PART": "60"}),
                       cli_overrides(ns))
    assert (s.archive.format, s.archive.fsync, s.archive.part) == ("ogg", False, 60.0)
    assert s.admission.max_streams == 3
    assert cli_overrides(serve_parser().parse_args([])) == {}  # nothing given, nothing set


def test_lists_on_the_command_line() -> None:
    ns = serve_parser().parse_args(["--processor", "level", "--processor", "vad,threshold=0.6",
                                    "--filters", "agc", "gain:db=3", "--filter-processors"])
    s = merge_settings(cli=cli_overrides(ns)).processing
    assert s.processors == ("level", "vad,threshold=0.6")
    assert s.filters == ("agc", "gain:db=3")
    assert s.filter_processors == ()  # the option alone: none


def test_sizes_have_one_parser_everywhere() -> None:
    ns = serve_parser().parse_args(["--min-free-space", "1.5G", "--max-message-bytes", "2M"])
    s = merge_settings(cli=cli_overrides(ns))
    assert (s.admission.min_free_space, s.ingest.max_message_bytes) == (3 << 29, 2 << 20)
    assert env_overrides({"EARSHOT_MIN_FREE_SPACE": "512KiB"}) == {"min_free_space": 512 << 10}
    assert parse_config_file('min_free_space = "64M"') == {"min_free_space": 64 << 20}
    assert parse_config_file("min_free_space = 1000") == {"min_free_space": 1000}
    assert Settings.of(min_free_space="1K").admission.min_free_space == 1024
    with pytest.raises(ConfigError, match=r"max message bytes must be a size \(64M, 1G or "
                                          r"bytes\) of at least 1024 bytes, not 1000"):
        Settings.of(max_message_bytes="1000")


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-message-bytes", "1000"], "argument --max-message-bytes: must be a size (64M, 1G "
                                      "or bytes) of at least 1024 bytes, not 1000"),
    (["--min-free-space", "lots"], "argument --min-free-space: 'lots' is not a size"),
    (["--max-streams", "some"], "argument --max-streams: max streams must be a count or 'auto'"),
    (["--processes", "65"], "argument --processes: must be an integer from 1 to 64, not 65"),
    (["--conn-burst", "0"], "argument --conn-burst: must be an integer of at least 1, not 0"),
    (["--bus-retention", "0.5"], "argument --bus-retention: must be a number from 1 to 604800"),
    (["--room-seats", "0"], "argument --room-seats: must be an integer from 1 to 64, not 0"),
    (["--seat-grace", "-1"], "argument --seat-grace: must be a number from 0 to 3600"),
])
def test_bad_options_are_usage_errors_with_the_range(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        serve_parser().parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_environment_values_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"EARSHOT_PORT='x': must be an integer"):
        env_overrides({"EARSHOT_PORT": "x"})
    with pytest.raises(ConfigError, match=r"EARSHOT_FSYNC='maybe': must be true or false"):
        env_overrides({"EARSHOT_FSYNC": "maybe"})
    with pytest.raises(ConfigError, match="processes needs a shared bus"):
        merge_settings(env=env_overrides({"EARSHOT_PROCESSES": "2"}))
    with pytest.raises(ConfigError, match="TLS needs both"):
        Settings.of(certfile="c.pem")
    assert env_overrides({"EARSHOT_ASR_MODEL": "m", "EARSHOT_PORT": "x"},
                         groups=["asr"]) == {"asr_model": "m"}


def test_json_redacted_for_logs() -> None:
    s = Settings.of(token="s3cret-token", bus="redis://:pw@127.0.0.1:6379/0",
                    mqtt="mqtt://user:pw@broker:1883/site", db="postgresql://u:pw@db/e")
    shown = json.loads(settings_to_json(s, redact=True))
    assert shown["token"] == MASK
    assert shown["bus"] == "redis://:***@127.0.0.1:6379/0"
    assert shown["mqtt"] == "mqtt://user:***@broker:1883/site"
    assert shown["db"] == "postgresql://u:***@db/e"
    assert "pw" not in json.dumps(shown) and "s3cret" not in json.dumps(shown)
    assert settings_from_json(settings_to_json(s)) == s


# -- --help and the docs' table -----------------------------------------------------------
def test_serve_help_lists_every_option_once_with_its_default_and_range() -> None:
    parser = serve_parser()
    flags = [f for a in parser._actions for f in a.option_strings if f.startswith("--")]
    assert len(flags) == len(set(flags))
    helps = {a.dest: a.help or "" for a in parser._actions}
    for opt in options():
        if opt.flag is None:
            assert opt.flat not in helps
            continue
        assert flags.count(opt.flag) == 1
        text = helps[opt.flat].replace("%%", "%")
        assert text == option_help(opt)
        assert f"env {opt.env}" in text
        if opt.default_text():
            assert f"default {opt.default_text()}" in text
        if opt.meta.range is not None:
            assert opt.meta.range.short() in text
    assert "(default 0.1; 0.005\u20135 seconds; env EARSHOT_ACK_INTERVAL)" in helps[
        "ack_interval"]
    out = parser.format_help()
    assert "--ack-interval SECONDS" in out and "--min-free-space SIZE" in out


def test_the_docs_table_lists_every_flag() -> None:
    from config_table import config_rows, config_table, file_only_rows

    rows = config_rows()
    assert [r.flags[0] for r in rows] == ["--config"] + [o.flag for o in options() if o.flag]
    assert {r.toml_key for r in file_only_rows()} == FILE_ONLY
    table = config_table()
    for opt in options():
        assert f"`{opt.env}`" in table and f"`{opt.path}`" in table
    assert re.search(r"\| `--ack-interval` \| `EARSHOT_ACK_INTERVAL` \| `ack_interval` or "
                     r"`ingest.ack_interval` \| `0.1` \| a number from 0.005 to 5 seconds \|",
                     table)


def test_worker_shares_the_asr_options() -> None:
    args = build_parser().parse_args(["worker", "asr", "--asr-model", "m", "--asr-beam-size",
                                      "3", "--bus-retention", "30"])
    assert cli_overrides(args, ["asr"]) == {"asr_model": "m", "asr_beam_size": 3}
    assert args.bus_retention == 30.0  # the worker's own option, not a setting
