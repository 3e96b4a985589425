"""`check`: confirms, with the stored (or given) tokens, that uploads would work: the token is
accepted, it carries ads:read and ads:write, and the ad account is reachable and neither under
review nor disapproved. `check_connection` is the same check as a function.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, TextIO

from target_pinterest_audiences.admin.common import (
    CHECK_RETRY_SECONDS,
    DEFAULT_API_URL,
    ENV_PREFIX,
    PROG,
    REQUIRED_SCOPES,
    SCOPE,
    _is_pinterest_id,
    granted_scopes,
)
from target_pinterest_audiences.pinterest.client import (
    PinterestAPIError,
    PinterestClient,
    RetriesExhausted,
    RetryPolicy,
    TargetError,
)
from target_pinterest_audiences.pinterest.tokens import (
    AuthError,
    TokenFileError,
    TokenManager,
    TokenStore,
    TransientAuthError,
    default_token_cache_path,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- check


def _stored_scope(store: TokenStore | None) -> Any:
    if store is None:
        return None
    try:
        stored = store.load()
    except AuthError:
        return None
    return stored.get("scope") if stored else None


def check_connection(
    *,
    ad_account_id: str,
    api_url: str = DEFAULT_API_URL,
    client_id: str | None = None,
    client_secret: str | None = None,
    access_token: str | None = None,
    refresh_token: str | None = None,
    token_cache_path: str | Path | None = None,
    tokens: TokenManager | None = None,
    log: logging.Logger | None = None,
    retry_seconds: float = CHECK_RETRY_SECONDS,
    timeout: float = 30.0,
) -> tuple[bool, str]:
    """Would uploads to `ad_account_id` work with these credentials? (ok, plain message).

    Uses the same tokens the target would (the token file first, then the given ones),
    refreshes when needed (saving the rotated pair), reads the granted scope and lists one
    customer list of the account. Pass `tokens` to reuse a TokenManager (its store is read
    for the scope). Never raises for a Pinterest or credential problem.
    """
    log = log or logger
    if not _is_pinterest_id(ad_account_id):
        return (
            False,
            f"NOT READY: ad_account_id must be 1 to 18 digits (0-9), got {ad_account_id!r}.",
        )
    if tokens is None:
        path = token_cache_path or default_token_cache_path(ad_account_id)
        try:
            tokens = TokenManager(
                api_url=api_url,
                client_id=client_id,
                client_secret=client_secret,
                access_token=access_token,
                refresh_token=refresh_token,
                store=TokenStore(path),
                logger=log,
                timeout=timeout,
            )
        except AuthError as exc:
            return False, f"NOT READY: {exc}."
    store = tokens.store
    if not tokens.has_credentials:
        where = f"no token file at {store.path}" if store else "no token file"
        return False, (
            f"NOT CONNECTED: {where} and no usable access or refresh token (a refresh token "
            "also needs client_id and client_secret). Connect with "
            f"`{PROG} connect --ad-account-id {ad_account_id}`."
        )
    refresh_hint = (
        ""
        if tokens.can_refresh
        else " (refreshing needs the refresh token plus client_id and client_secret)"
    )

    try:
        tokens.access_token()
        scope = tokens.scope or _stored_scope(store)
        if scope is None and tokens.can_refresh:
            # Only a token answer says what was granted: refresh once to learn it.
            tokens.refresh()
            scope = tokens.scope
    except TokenFileError as exc:  # before the others: a lock held too long is "transient" too
        return False, f"NOT READY: {exc}."
    except TransientAuthError as exc:
        return False, f"UNREACHABLE: {exc}; check api_url and the network, then check again."
    except AuthError as exc:
        return False, f"TOKEN REJECTED: {exc}{refresh_hint}."

    client = PinterestClient(
        api_url=api_url,
        tokens=tokens,
        logger=log,
        retry=RetryPolicy(budget_seconds=retry_seconds),
        timeout=timeout,
    )
    try:
        client.request(
            "GET", f"/ad_accounts/{ad_account_id}/customer_lists", params={"page_size": 1}
        )
    except PinterestAPIError as exc:
        return False, explain_refusal(exc, ad_account_id, refresh_hint)
    except RetriesExhausted as exc:
        return False, f"UNREACHABLE: {exc}"
    except TokenFileError as exc:
        return False, f"NOT READY: {exc}."
    except (AuthError, TargetError) as exc:
        return False, f"TOKEN REJECTED: {exc}{refresh_hint}."

    scopes = granted_scopes(scope)
    if scopes is None:
        return False, (
            f"NOT VERIFIED: the token reaches ad account {ad_account_id}, but its scopes are "
            "unknown (an access token given by hand), so ads:write cannot be confirmed. Give the "
            "refresh token with client_id and client_secret, or connect with "
            f"`{PROG} connect`, and check again."
        )
    missing = [s for s in REQUIRED_SCOPES if s not in scopes]
    if missing:
        return False, (
            f"MISSING SCOPE: the token lacks {', '.join(missing)} (granted: {scope}), so "
            "uploads would be refused (HTTP 401, code 3). Reconnect with "
            f"`{PROG} connect`, approving {SCOPE}."
        )
    return True, (
        f"OK: the token works, has {SCOPE}, and ad account {ad_account_id} is reachable and "
        "not under review: uploads will work."
    )


def explain_refusal(exc: PinterestAPIError, ad_account_id: str, refresh_hint: str) -> str:
    rid = f"x-pinterest-rid {exc.rid}"
    quoted = f"(HTTP {exc.status}, code {exc.code}, {rid})"
    if exc.status == 403 and exc.code == 2626:
        return (
            f"UNDER REVIEW: ad account {ad_account_id} is under review by Pinterest {quoted}: it "
            "cannot accept audience uploads until Pinterest's review ends. Check the account in "
            "Pinterest Ads Manager and run the check again once the review is over."
        )
    if exc.status == 403 and exc.code == 2625:
        return (
            f"DISAPPROVED: ad account {ad_account_id} is disapproved by Pinterest {quoted}: it "
            "cannot accept audience uploads. Contact Pinterest support, quoting the "
            "x-pinterest-rid."
        )
    if exc.status == 401 and exc.code == 3:
        return (
            f"MISSING SCOPE: Pinterest says the token lacks a required scope {quoted}. Reconnect "
            f"with `{PROG} connect`, approving {SCOPE}."
        )
    if exc.status == 404 or exc.code == 29:
        return (
            f"NO ACCESS: the connected Pinterest user cannot reach ad account {ad_account_id} "
            f"{quoted}. Check the id, or connect as a user with access to it (a business admin "
            "can grant access in Pinterest Business Manager)."
        )
    if exc.status == 401:
        return (
            f"TOKEN REJECTED: Pinterest refused the access token {quoted}{refresh_hint}. "
            f"Reconnect with `{PROG} connect`."
        )
    return f"NOT READY: {exc}"


def run_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if not args.ad_account_id:
        print(
            f"Say which ad account to check: --ad-account-id or {ENV_PREFIX}AD_ACCOUNT_ID.",
            file=err,
        )
        return 2
    ok, message = check_connection(
        ad_account_id=args.ad_account_id,
        api_url=args.api_url,
        client_id=args.client_id,
        client_secret=args.client_secret,
        access_token=args.access_token,
        refresh_token=args.refresh_token,
        token_cache_path=args.token_cache_path,
        retry_seconds=args.retry_seconds,
    )
    print(message, file=out, flush=True)
    return 0 if ok else 1
