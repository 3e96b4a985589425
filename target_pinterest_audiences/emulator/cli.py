"""The emulator as a program: its argument parser and main()."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from target_pinterest_audiences.emulator.server import Emulator
from target_pinterest_audiences.emulator.validation import DEFAULT_AD_ACCOUNT


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m target_pinterest_audiences.emulator",
        description="Local Pinterest API v5 emulator (customer lists, audiences, OAuth).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="0 picks a free port")
    p.add_argument(
        "--ad-account",
        action="append",
        dest="ad_accounts",
        metavar="ID",
        help=f"a known ad account (repeatable; default {DEFAULT_AD_ACCOUNT})",
    )
    p.add_argument("--client-id", default=None, help="or EMULATOR_CLIENT_ID")
    p.add_argument("--client-secret", default=None, help="or EMULATOR_CLIENT_SECRET")
    p.add_argument("--access-token", default=None, help="or EMULATOR_ACCESS_TOKEN")
    p.add_argument("--refresh-token", default=None, help="or EMULATOR_REFRESH_TOKEN")
    p.add_argument("--access-token-expires-in", type=int, default=2592000)
    p.add_argument(
        "--under-review",
        nargs="*",
        metavar="ID",
        default=None,
        help="ad accounts under review (no ID: all of them)",
    )
    p.add_argument(
        "--disapproved",
        nargs="*",
        metavar="ID",
        default=None,
        help="disapproved ad accounts (no ID: all of them)",
    )
    p.add_argument("--record-cap", type=int, default=None)
    p.add_argument("--write-delay-ms", type=int, default=0)
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--access-token-ttl-requests", type=int, default=None)
    p.add_argument("--refresh-single-use", action="store_true")
    p.add_argument("--writes-per-minute-limit", type=int, default=None)
    p.add_argument(
        "--match-delay-seconds",
        type=float,
        default=0.0,
        help="seconds after a list's latest write until its audience is matched (default 0)",
    )
    p.add_argument(
        "--match-fraction",
        type=float,
        default=1.0,
        help="share of identifiers that match a Pinterest user (0..1, default 1)",
    )
    p.add_argument("--state-file", default=None, help="write state() as JSON here on exit")
    p.add_argument("--verbose", action="store_true", help="log each request to stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; print exactly one line (the URL) to stdout."""
    args = _build_parser().parse_args(argv)

    def credential(flag: str | None, env: str, default: str) -> str:
        return flag if flag is not None else os.environ.get(env, default)

    ad_accounts = tuple(args.ad_accounts or (DEFAULT_AD_ACCOUNT,))
    emu = Emulator(
        host=args.host,
        port=args.port,
        ad_accounts=ad_accounts,
        client_id=credential(args.client_id, "EMULATOR_CLIENT_ID", "emu-client-id"),
        client_secret=credential(args.client_secret, "EMULATOR_CLIENT_SECRET", "emu-client-secret"),
        access_token=credential(args.access_token, "EMULATOR_ACCESS_TOKEN", "emu-access-token"),
        refresh_token=credential(args.refresh_token, "EMULATOR_REFRESH_TOKEN", "emu-refresh-token"),
        access_token_expires_in=args.access_token_expires_in,
        verbose=args.verbose,
    )
    settings: dict[str, Any] = {
        "record_cap": args.record_cap,
        "write_delay_ms": args.write_delay_ms,
        "delay_ms": args.delay_ms,
        "access_token_ttl_requests": args.access_token_ttl_requests,
        "refresh_single_use": args.refresh_single_use,
        "writes_per_minute_limit": args.writes_per_minute_limit,
        "match_delay_seconds": args.match_delay_seconds,
        "match_fraction": args.match_fraction,
    }
    if args.under_review is not None:
        settings["under_review"] = args.under_review or ad_accounts
    if args.disapproved is not None:
        settings["disapproved"] = args.disapproved or ad_accounts
    try:
        emu._apply_config(settings)
    except ValueError as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 2

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    emu.start()
    print(f"listening on {emu.base_url}", flush=True)
    try:
        while not stopping.wait(0.2):
            pass
    finally:
        emu.stop()
        if args.state_file:
            with open(args.state_file, "w", encoding="utf-8") as fh:
                json.dump(emu.state(), fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
