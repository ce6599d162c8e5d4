"""What checking credentials costs per request: python benchmarks/bench_tokens.py [--n N].

* the admin token (``--token``): a constant-time compare (``hmac.compare_digest``);
* a scoped token (JWT, HS256, PyJWT): signature, ``exp`` and claims checked;
* both through :func:`earshot.server.auth.authenticate`, the one call every door makes
  (the admin token is tried first, so a scoped token also pays for that compare), a
  scoped token both at first sight and again (verified tokens are remembered, 1024 of
  them, their expiry checked on every use);
* minting one (``earshot token create``, ``POST /api/tokens``, each signed link).

In process, no sockets, no database (verifying never needs one). Best of 5 runs, µs per
call. Writes ``benchmarks/results/tokens.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hmac
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt

from earshot.config import Settings
from earshot.server import auth
from earshot.server.auth import authenticate, mint, secret_of, verify

OUT = Path(__file__).resolve().parent / "results" / "tokens.json"


def per_call_us(fn: Callable[[], Any], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="calls per run (default 20000)")
    args = ap.parse_args()
    admin = "a-long-admin-token-0123456789abcdef"
    security = Settings.of(token=admin).security
    secret = secret_of(security)
    assert secret is not None
    scoped = mint(secret, ["publish", "listen"], ttl=3600, names="kitchen/*",
                  processors=["vad"])
    expected, presented = admin.encode(), admin.encode()
    results = {
        "admin_compare_us": per_call_us(lambda: hmac.compare_digest(expected, presented),
                                        args.n),
        "authenticate_admin_us": per_call_us(lambda: authenticate(security, admin), args.n),
        # first sight of a token: the signature checked (the cache emptied every call)
        "verify_scoped_us": per_call_us(lambda: (auth._verified.clear(),
                                                 verify(secret, scoped)), args.n),
        "authenticate_scoped_us": per_call_us(lambda: (auth._verified.clear(),
                                                       authenticate(security, scoped)), args.n),
        # the same token again (a client's next request): looked up, expiry checked
        "authenticate_scoped_again_us": per_call_us(lambda: authenticate(security, scoped),
                                                    args.n),
        "mint_us": per_call_us(lambda: mint(secret, ["listen"], ttl=300), args.n // 4),
    }
    record = {
        "when": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(), "pyjwt": jwt.__version__,
        "machine": platform.machine(), "calls_per_run": args.n, "token_bytes": len(scoped),
        **{k: round(v, 3) for k, v in results.items()},
        "scoped_over_admin": round(results["authenticate_scoped_us"]
                                   / results["authenticate_admin_us"], 1),
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
