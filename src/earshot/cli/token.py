"""``earshot token create``: mint a scoped token offline, with the server's own secret.

    earshot token create --scope listen --names 'kitchen/*' --ttl 3600

The secret comes from where ``earshot serve`` reads it — ``--token-secret`` or ``--token``,
``EARSHOT_TOKEN_SECRET``/``EARSHOT_TOKEN``, or the config file (``--config``,
``EARSHOT_CONFIG``) — so a token minted here verifies on every gateway of that server.
Only the token is printed on stdout (``TOKEN=$(earshot token create …)``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from earshot.errors import ConfigError

DEFAULT_TTL = 3600.0
SCOPES = ("publish", "listen", "worker", "admin")


def add_parser(sub: Any) -> None:
    """The ``token`` subcommand and its ``create`` action."""
    from earshot.config.cli import CONFIG_HELP, add_option
    from earshot.config.groups import option

    t = sub.add_parser("token", help="mint scoped tokens (publish, listen, worker, admin)")
    actions = t.add_subparsers(dest="token_command", required=True)
    c = actions.add_parser("create", help="print a new signed token with the scopes given",
                           description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    c.add_argument("--scope", nargs="+", action="extend", required=True, choices=SCOPES,
                   help="what it grants (one or more)")
    c.add_argument("--names", metavar="GLOB",
                   help="only streams whose name matches this glob (e.g. 'kitchen/*')")
    c.add_argument("--processors", nargs="+", metavar="KIND",
                   help="worker: only events of these processor kinds")
    c.add_argument("--ttl", type=float, default=DEFAULT_TTL, metavar="SECONDS",
                   help=f"seconds until it expires (default {DEFAULT_TTL:.0f})")
    c.add_argument("--subject", default="token", help="who it is for (the 'sub' claim)")
    c.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    for flat in ("token", "token_secret"):
        add_option(c, option(flat))
    c.set_defaults(func=cmd_token_create)


def cmd_token_create(args: argparse.Namespace) -> int:
    from earshot.config import env_overrides, load_config_file, merge_settings
    from earshot.config.cli import cli_overrides
    from earshot.server.auth import mint, secret_of

    config = args.config or os.environ.get("EARSHOT_CONFIG")
    file_opts = load_config_file(config) if config else {}
    settings = merge_settings(file_opts, env_overrides(), cli_overrides(args, ["security"]))
    secret = secret_of(settings.security)
    if secret is None:
        raise ConfigError("no secret to sign with: give --token-secret or --token (or "
                          "EARSHOT_TOKEN_SECRET, EARSHOT_TOKEN, or the config file's)")
    try:
        token = mint(secret, args.scope, ttl=args.ttl, names=args.names,
                     processors=args.processors, subject=args.subject)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(token, file=sys.stdout)
    return 0
