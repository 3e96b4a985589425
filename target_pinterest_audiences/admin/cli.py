"""`target-pinterest-audiences-admin`: the admin command's argument parser and entry point; each
command lives in its own module (connect.py, check.py, status.py, forget.py).

The command was `target-pinterest-audiences-auth` before it did more than authorization;
that name stays installed as an alias, so scripts and Meltano projects that use it keep working.
Tokens, the client secret and the authorization code are never printed or logged.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from target_pinterest_audiences.admin.check import run_check
from target_pinterest_audiences.admin.common import (
    ALIAS,
    CHECK_RETRY_SECONDS,
    COMMANDS,
    DEFAULT_API_URL,
    DEFAULT_AUTHORIZE_URL,
    DEFAULT_REDIRECT_PORT,
    DEFAULT_TIMEOUT_SECONDS,
    ENV_PREFIX,
    PROG,
    _env,
    _is_pinterest_id,
)
from target_pinterest_audiences.admin.connect import run_connect
from target_pinterest_audiences.admin.forget import run_forget
from target_pinterest_audiences.admin.status import run_status
from target_pinterest_audiences.urls import api_url_problem

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- CLI


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be 0..65535 (0: any free port)")
    return value


def _account(text: str) -> str:
    if not _is_pinterest_id(text):
        raise argparse.ArgumentTypeError("an ad account id is 1 to 18 digits (0-9)")
    return text


def _api_url(text: str) -> str:
    problem = api_url_problem(text, "the API URL")
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--ad-account-id",
        type=_account,
        default=_env("AD_ACCOUNT_ID"),
        help=f"Pinterest ad account id (env {ENV_PREFIX}AD_ACCOUNT_ID)",
    )
    common.add_argument(
        "--client-id",
        default=_env("CLIENT_ID"),
        help=f"Pinterest app id (env {ENV_PREFIX}CLIENT_ID)",
    )
    common.add_argument(
        "--client-secret",
        default=_env("CLIENT_SECRET"),
        help=f"Pinterest app secret; prefer env {ENV_PREFIX}CLIENT_SECRET",
    )
    common.add_argument(
        "--api-url",
        type=_api_url,
        default=_env("API_URL") or DEFAULT_API_URL,
        help=f"Pinterest API base URL (env {ENV_PREFIX}API_URL; default {DEFAULT_API_URL})",
    )
    common.add_argument(
        "--token-cache-path",
        default=_env("TOKEN_CACHE_PATH"),
        help="token file (env "
        f"{ENV_PREFIX}TOKEN_CACHE_PATH; default "
        "~/.config/target-pinterest-audiences/tokens-<ad account id>.json)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log more (to stderr)")

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Connect a Pinterest ad account to target-pinterest-audiences, check a "
        "connection, or see what Pinterest made of the uploads. Flags win over the "
        f"environment variables. ({ALIAS} is the same command under its first name.)",
    )
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    connect = commands.add_parser(
        "connect",
        parents=[common],
        help="authorize with a single-use link and save the tokens (the default)",
        description="Print a single-use Pinterest authorize link (stdout), wait for the "
        "approval on a loopback address and save the tokens to the token file (mode 0600).",
    )
    connect.add_argument(
        "--authorize-url",
        default=DEFAULT_AUTHORIZE_URL,
        help=f"Pinterest's authorize page (default {DEFAULT_AUTHORIZE_URL})",
    )
    connect.add_argument(
        "--redirect-port",
        type=_port,
        default=None,
        help=f"loopback port to listen on (default {DEFAULT_REDIRECT_PORT}; 0: any free port); "
        "the redirect URI http://127.0.0.1:<port>/callback must be registered in the app",
    )
    connect.add_argument(
        "--redirect-uri",
        default=None,
        help="the exact redirect URI registered in the Pinterest app, when it is not "
        "http://127.0.0.1:<port>/callback (it must lead to the loopback listener)",
    )
    connect.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT_SECONDS,
        help=f"seconds before the link expires (default {DEFAULT_TIMEOUT_SECONDS:.0f})",
    )
    connect.add_argument("--no-browser", action="store_true", help="do not open a browser")
    # check and status read with the stored or given tokens.
    reading = argparse.ArgumentParser(add_help=False)
    reading.add_argument(
        "--access-token",
        default=_env("ACCESS_TOKEN"),
        help=f"access token when there is no token file; prefer env {ENV_PREFIX}ACCESS_TOKEN",
    )
    reading.add_argument(
        "--refresh-token",
        default=_env("REFRESH_TOKEN"),
        help=f"refresh token when there is no token file; prefer env {ENV_PREFIX}REFRESH_TOKEN",
    )
    reading.add_argument(
        "--retry-seconds",
        type=_positive,
        default=CHECK_RETRY_SECONDS,
        help=f"give up on a failing Pinterest after this long (default {CHECK_RETRY_SECONDS:.0f})",
    )
    commands.add_parser(
        "check",
        parents=[common, reading],
        help="confirm that uploads would work with the stored or given tokens",
        description="Refresh if needed, then confirm the token works, has ads:read and "
        "ads:write, and reaches the ad account (not under review, not disapproved). "
        "Exit 0 only when uploads would work.",
    )
    # status and forget read (forget also writes) the snapshot store.
    snapshots = argparse.ArgumentParser(add_help=False)
    snapshots.add_argument(
        "--snapshot-path",
        default=_env("SNAPSHOT_PATH"),
        help=f"directory of the snapshot files, as the target's snapshot_path (env "
        f"{ENV_PREFIX}SNAPSHOT_PATH; default $XDG_STATE_HOME/target-pinterest-audiences)",
    )
    snapshots.add_argument(
        "--snapshot-url",
        default=_env("SNAPSHOT_URL"),
        help=f"PostgreSQL snapshot store, as the target's snapshot_url; prefer env "
        f"{ENV_PREFIX}SNAPSHOT_URL (it may hold a password)",
    )
    status = commands.add_parser(
        "status",
        parents=[common, reading, snapshots],
        help="what Pinterest made of the uploads: audience status and size, list status and "
        "counters, confirmed members, match rate",
        description="Read one CUSTOMER_LIST Audience and its Customer List, count the "
        "identifiers the target confirmed (the snapshot store) and compute the match rate "
        "(audience size / confirmed members); without an audience, one row for every "
        "Audience the target keeps for the ad account. Reads only. Exit 0 when everything "
        "was read.",
    )
    which = status.add_mutually_exclusive_group()
    which.add_argument(
        "--audience-id",
        default=None,
        help=f"the Audience's id (env {ENV_PREFIX}AUDIENCE_ID)",
    )
    which.add_argument(
        "--audience-name",
        default=None,
        help="the name of the one CUSTOMER_LIST Audience to report on "
        f"(env {ENV_PREFIX}AUDIENCE_NAME)",
    )
    status.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table (default): for people; json: one JSON object on stdout",
    )
    forget = commands.add_parser(
        "forget",
        parents=[common, reading, snapshots],
        help="an erasure request or opt-out: remove people from every Customer List of the "
        "ad account and keep them in the suppression set; prints a receipt",
        description="Read identifiers from --input (CSV with a header row, or JSON lines; the "
        "standard identifier fields, the target's rules and hashing), remove them from every "
        "Customer List of the ad account whose type fits, keep them in the suppression set "
        "(hashed, in the snapshot store) so that no run adds them again, and print a receipt "
        "that names no person. Exit 0 only when every list confirmed the removal; running it "
        "again is harmless.",
    )
    forget.add_argument(
        "--input",
        required=True,
        metavar="FILE",
        help="CSV with a header row, or JSON lines; - for standard input",
    )
    forget.add_argument(
        "--dry-run",
        action="store_true",
        help="print the receipt it would produce; write nothing (Pinterest is only read)",
    )
    forget.add_argument(
        "--lift",
        action="store_true",
        help="take the identifiers out of the suppression set (opted back in); remove nothing",
    )
    forget.add_argument(
        "--only-synced",
        action="store_true",
        help="only the Customer Lists of the snapshot store (the target's own lists)",
    )
    forget.add_argument(
        "--external-id-type",
        default=_env("EXTERNAL_ID_TYPE"),
        help="what an external_id column holds (LR_ID, DLX_ID or HASHED_PINNER_ID), as the "
        f"target's external_id_type (env {ENV_PREFIX}EXTERNAL_ID_TYPE)",
    )
    forget.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table (default): for people; json: one JSON object on stdout",
    )
    return parser


def _normalize_argv(argv: Sequence[str]) -> list[str]:
    args = list(argv)
    if "--check" in args:  # the spelling of the check mode
        args.remove("--check")
        if args and args[0] in {"connect", "check"}:
            args.pop(0)
        return ["check", *args]
    if not args or args[0] not in {*COMMANDS, "-h", "--help"}:
        return ["connect", *args]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 only on success)."""
    parser = build_parser()
    try:
        args = parser.parse_args(_normalize_argv(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    package_logger = logging.getLogger("target_pinterest_audiences")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        if args.command == "check":
            return run_check(args, sys.stdout, sys.stderr)
        if args.command == "status":
            return run_status(args, sys.stdout, sys.stderr)
        if args.command == "forget":
            return run_forget(args, sys.stdout, sys.stderr)
        return run_connect(args, sys.stdout, sys.stderr)
    finally:
        package_logger.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
