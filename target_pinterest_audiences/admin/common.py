"""What the admin commands share: their names, defaults and small helpers."""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TextIO

from target_pinterest_audiences.pinterest.client import PinterestClient, RetryPolicy
from target_pinterest_audiences.pinterest.tokens import (
    AuthError,
    TokenManager,
    TokenStore,
    default_token_cache_path,
)

PROG = "target-pinterest-audiences-admin"
#: The command's first name, still installed (pyproject.toml) so that existing setups work.
ALIAS = "target-pinterest-audiences-auth"
COMMANDS = ("connect", "check", "status", "forget")
PLUGIN = "target-pinterest-audiences"
ENV_PREFIX = "TARGET_PINTEREST_AUDIENCES_"
DEFAULT_AUTHORIZE_URL = "https://www.pinterest.com/oauth/"
DEFAULT_API_URL = "https://api.pinterest.com/v5"
DEFAULT_REDIRECT_PORT = 8085
DEFAULT_TIMEOUT_SECONDS = 600.0
#: `check` gives up on a flaky Pinterest after this long (the target's budget is far longer).
CHECK_RETRY_SECONDS = 30.0
#: Tries of the code exchange when the token endpoint is unreachable or busy (429, 5xx).
EXCHANGE_ATTEMPTS = 3
REQUIRED_SCOPES = ("ads:read", "ads:write")
SCOPE = ",".join(REQUIRED_SCOPES)
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
_NEW_LINK = f"run `{PROG} connect` again for a new link"

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- helpers


def _env(name: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name) or None


def granted_scopes(scope: Any) -> set[str] | None:
    """The scopes in a token answer's `scope` (comma or space separated); None if unknown."""
    if not scope or not isinstance(scope, str):
        return None
    return {part for part in re.split(r"[,\s]+", scope) if part}


def _when(timestamp: Any) -> str:
    try:
        moment = datetime.fromtimestamp(float(timestamp), tz=timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return "at an unknown time"
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _is_pinterest_id(text: str | None) -> bool:
    """Pinterest's id pattern (`^\\d+$`, at most 18 long); ASCII digits only, unlike isdigit()."""
    return bool(text) and re.fullmatch(r"[0-9]{1,18}", str(text)) is not None


def failure_printer(err: TextIO, command: str) -> Callable[..., int]:
    """A command's one-line error on stderr (no line break inside: one failure, one line);
    returns the exit status to give (1, or 2 for a usage error)."""

    def fail(message: str, code: int = 1) -> int:
        line = message.replace("\r", " ").replace("\n", " ")
        print(f"{PROG} {command}: {line}", file=err, flush=True)
        return code

    return fail


def reading_client(args: argparse.Namespace, account: str) -> PinterestClient | str:
    """The client of a reading command (status, forget) with the stored or given tokens, or
    why there is none (a message for the user)."""
    store_path = args.token_cache_path or default_token_cache_path(account)
    try:
        tokens = TokenManager(
            api_url=args.api_url,
            client_id=args.client_id,
            client_secret=args.client_secret,
            access_token=args.access_token,
            refresh_token=args.refresh_token,
            store=TokenStore(store_path),
            logger=logger,
            timeout=30.0,
        )
    except AuthError as exc:
        return str(exc)
    if not tokens.has_credentials:
        return (
            f"not connected: no token file at {store_path} and no usable access or refresh "
            f"token; connect with `{PROG} connect --ad-account-id {account}`"
        )
    return PinterestClient(
        api_url=args.api_url,
        tokens=tokens,
        logger=logger,
        retry=RetryPolicy(budget_seconds=args.retry_seconds),
        timeout=30.0,
    )
