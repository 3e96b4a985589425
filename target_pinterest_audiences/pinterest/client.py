"""The Pinterest API client: HTTP, auth, retries, rate limits and error reporting.

Everything that talks to Pinterest goes through `PinterestClient.request`, so the rules
for what is retried, how long we wait, how many calls a minute we make and how an error
is reported live here and nowhere else.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import backoff
import requests

from target_pinterest_audiences.errors import TargetError
from target_pinterest_audiences.pinterest.limits import (
    FairTurns,
    SharedWriteWindow,
    SlidingWindowLimiter,
    Stopped,
)
from target_pinterest_audiences.pinterest.tokens import AuthError, TokenManager, TransientAuthError

#: How often one request may meet a 401, refresh the token and repeat.
MAX_REAUTHORIZATIONS = 3
#: HTTP statuses worth retrying: rate limits and server-side trouble.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Pinterest account states that no retry can fix; each gets its own plain message.
ACCOUNT_BLOCKS = {
    2626: (
        "the ad account is under review by Pinterest and cannot accept audience uploads "
        "until the review ends; nothing was written for this request. Check the account's "
        "status in Pinterest Ads Manager and run again once the review is over"
    ),
    2625: (
        "the ad account is disapproved by Pinterest and cannot accept audience uploads; "
        "contact Pinterest support (quote the x-pinterest-rid)"
    ),
}
_TOO_LARGE_WORDS = ("too large", "too many", "too long", "exceed", "limit")


#: Beyond its timeout, how long an unanswered request may still be applied by Pinterest.
STRAGGLER_MARGIN_SECONDS = 5.0


_NOT_PERMITTED = (
    "Pinterest says the connected user may not do this (code 29, not permitted): check in Ads "
    "Manager (Business Access) that the user who connected has access to this ad account with "
    "a role that may manage audiences, then reconnect with `target-pinterest-audiences-admin "
    "connect`"
)
#: Refusals (HTTP status, Pinterest code) that no token refresh can cure, with what to do
#: (FACTS: code 3 = missing scopes on 401; code 29 = not permitted, on 401 or 403).
_NO_REFRESH_HELPS: dict[tuple[int, int | None], str] = {
    (401, 3): (
        "The token lacks the scopes this needs (ads:read, ads:write): reconnect with "
        "`target-pinterest-audiences-admin connect`, which asks for both"
    ),
    (401, 29): _NOT_PERMITTED,
    (403, 29): _NOT_PERMITTED,
}


class PinterestAPIError(TargetError):
    """Pinterest refused a request; carries status, Pinterest's code and the request id."""

    def __init__(
        self, method: str, path: str, status: int, code: Any, message: str, rid: str, hint: str = ""
    ) -> None:
        self.method, self.path, self.status, self.code, self.rid = method, path, status, code, rid
        self.api_message = message
        text = (
            f"Pinterest refused {method} {path}: HTTP {status}, code {code}, "
            f"message {message!r}, x-pinterest-rid {rid}"
        )
        super().__init__(f"{text}. {hint}" if hint else text)


class RequestTooLarge(PinterestAPIError):
    """The request carried more records than Pinterest takes at once: split it and retry."""


class RetriesExhausted(TargetError):
    """Transient failures outlasted the retry time budget."""


class AmbiguousWrite(TargetError):
    """A non-idempotent write may or may not have been applied (connection lost, 5xx)."""


class Interrupted(TargetError):
    """The run is stopping (signal): no more retries."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter inside a time budget; Retry-After is honoured."""

    budget_seconds: float = 900.0
    base_delay: float = 1.0
    max_delay: float = 60.0
    factor: float = 2.0

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Successive waits: full jitter over backoff's exponential series, capped."""
        rng = rng or random.Random()
        for ceiling in backoff.expo(
            base=self.factor, factor=self.base_delay, max_value=self.max_delay
        ):
            if not ceiling:  # primed with None (backoff 2.x) or 0 (python-backoff 3.x)
                continue
            yield rng.uniform(0, ceiling)

    def wait_for(self, jittered: float, retry_after: float | None) -> float:
        """Never wait less than Pinterest asked for; never more than max_delay unless it asked."""
        if retry_after is not None:
            return max(jittered, retry_after)
        return min(jittered, self.max_delay)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (only the delta-seconds form is used by APIs like Pinterest's)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


class BearerAuth(requests.auth.AuthBase):
    """The Authorization header, set as requests' auth: then requests neither looks up
    ~/.netrc on every call nor lets a netrc entry for the API host replace the token."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


class PinterestClient:
    """Calls Pinterest with retries, token refresh, rate limits and actionable errors."""

    def __init__(
        self,
        *,
        api_url: str,
        tokens: TokenManager,
        logger: logging.Logger,
        retry: RetryPolicy,
        writes_per_minute: int = 400,
        reads_per_minute: int = 1000,
        timeout: float = 60.0,
        stop_event: threading.Event | None = None,
        concurrent_writes: int = 4,
        shared_window: Path | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.tokens = tokens
        self.logger = logger
        self.retry = retry
        self.timeout = timeout
        # One budget for the run: every stream's client (see for_stream) shares these.
        self.write_limiter = SlidingWindowLimiter(writes_per_minute)
        self.read_limiter = SlidingWindowLimiter(reads_per_minute)
        self.turns = FairTurns(concurrent_writes)
        #: Processes on one token file share its write window (None: this process only).
        self.shared_window = (
            SharedWriteWindow(
                shared_window,
                writes_per_minute,
                in_flight_seconds=self.straggle_seconds(),
            )
            if shared_window is not None
            else None
        )
        #: Whose turn a write of this client takes (a stream's name; "" for the run's own).
        self.turn_key = ""
        self.stop_event = stop_event or threading.Event()
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/json"
        self.requests_sent = 0
        self.retries = 0
        #: Attempts that timed out: such a request may still be applied later.
        self.timeouts = 0
        self._counters = threading.Lock()  # PATCHes may run in several threads
        self.last_rid: str | None = None

    def for_stream(self, stream: str) -> PinterestClient:
        """A client for one stream of the run: its own counters (for its report) and session,
        the run's budget (limits, turns, shared window), tokens and stop event."""
        sibling = copy.copy(self)
        sibling.turn_key = stream
        sibling.session = requests.Session()
        sibling.session.headers.update(self.session.headers)
        sibling.requests_sent = sibling.retries = sibling.timeouts = 0
        sibling._counters = threading.Lock()
        sibling.last_rid = None
        return sibling

    def _take_budget(self, is_write: bool, limiter: SlidingWindowLimiter) -> Callable[[], None]:
        """Wait for this request's share of the budget; returns what gives it back."""
        if not is_write:
            limiter.acquire()
            return limiter.release
        stopping = self.stop_event.is_set
        try:
            self.turns.acquire(self.turn_key, stopping)
        except Stopped:
            raise Interrupted("stopped while waiting for a turn to write") from None
        try:
            limiter.acquire()
            try:
                shared = self.shared_window.acquire(stopping) if self.shared_window else None
            except BaseException:
                limiter.release()
                raise
        except BaseException:
            self.turns.release()
            if isinstance(sys.exc_info()[1], Stopped):
                raise Interrupted("stopped while waiting for the shared write window") from None
            raise

        def release() -> None:
            limiter.release()
            if shared is not None:
                assert self.shared_window is not None
                self.shared_window.release(shared)
            self.turns.release()

        return release

    def request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        body: bytes | None = None,
        params: dict[str, Any] | None = None,
        idempotent: bool = True,
        deadline: float | None = None,
        on_timeout: Callable[[], None] | None = None,
        on_send: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """One API call, retried on 429/5xx/timeouts/dropped connections within the budget.

        `body` is a JSON body already encoded (`records_body`), sent as is by every attempt.
        `on_send` is called right before each attempt goes out (a write's journal keeps
        when its last attempt may still land, for the run after a kill).

        A non-idempotent call (a create) whose outcome is unknown raises AmbiguousWrite
        instead of being repeated blindly: the caller checks whether it took effect, and
        passes the same `deadline` (time.monotonic()) when it tries again.
        """
        assert json is None or body is None, "one body: json= or body="
        is_write = method.upper() in {"POST", "PATCH", "PUT", "DELETE"}
        limiter = self.write_limiter if is_write else self.read_limiter
        deadline = deadline or self.deadline()
        delays = self.retry.delays()
        attempts = 0
        # A 401 means: refresh (unless another request in flight already did) and repeat;
        # a request gives up once tokens it refreshed itself were refused a few times.
        reauthorized = 0
        while True:
            if self.stop_event.is_set():
                raise Interrupted(f"stopped before {method} {path} completed")
            attempts += 1
            try:
                token = self.tokens.access_token()
            except TransientAuthError as exc:
                self.pause(method, path, attempts, deadline, delays, None, f"token refresh: {exc}")
                continue
            release = self._take_budget(is_write, limiter)
            if on_send is not None:
                try:
                    on_send()
                except BaseException:
                    release()  # nothing was sent
                    raise
            try:
                response = self.session.request(
                    method,
                    self.api_url + path,
                    json=json,
                    data=body,
                    headers=_JSON_CONTENT if body is not None else None,
                    params=params,
                    auth=BearerAuth(token),
                    timeout=self.timeout,
                )
            except (
                requests.exceptions.InvalidURL,
                requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema,
                requests.exceptions.InvalidHeader,
            ) as exc:
                raise TargetError(
                    f"cannot send {method} {path}: {type(exc).__name__}; check the api_url setting"
                ) from None
            except requests.RequestException as exc:
                response = None
                problem = f"{type(exc).__name__} (no answer)"
                if isinstance(exc, requests.Timeout):
                    with self._counters:
                        self.timeouts += 1
                    if on_timeout is not None:
                        on_timeout()
                # A refused connection never reached Pinterest; anything later might have.
                sent = not isinstance(exc, requests.ConnectionError) or _maybe_sent(exc)
            finally:
                release()
                with self._counters:
                    self.requests_sent += 1

            retry_after: float | None = None
            if response is not None:
                rid = response.headers.get("x-pinterest-rid") or "-"
                self.last_rid = rid
                status = response.status_code
                if 200 <= status < 300:
                    return _json_body(response)
                code, message = _error_fields(response)
                refused = _NO_REFRESH_HELPS.get((status, code)) if isinstance(code, int) else None
                if refused is not None:  # a fresh token would be refused too
                    raise PinterestAPIError(method, path, status, code, message, rid, refused)
                if status == 401 and reauthorized < MAX_REAUTHORIZATIONS:
                    self.logger.info("HTTP 401 on %s %s; refreshing the access token", method, path)
                    try:
                        # Only a token this request obtained itself counts against it.
                        reauthorized += self.tokens.on_unauthorized(token)
                        continue
                    except TransientAuthError as exc:
                        problem = f"token refresh: {exc}"
                        self.pause(method, path, attempts, deadline, delays, None, problem)
                        continue
                    except AuthError as exc:
                        raise TargetError(f"{exc} (x-pinterest-rid {rid})") from None
                if _is_too_large(status, message):
                    raise RequestTooLarge(method, path, status, code, message, rid)
                if status not in RETRYABLE_STATUSES:
                    hint = ACCOUNT_BLOCKS.get(code, "") if status == 403 else ""
                    if status == 401:
                        hint = (
                            "The access token was refused again after a refresh: check that the "
                            "app has the ads:read and ads:write scopes and reconnect"
                        )
                    raise PinterestAPIError(method, path, status, code, message, rid, hint)
                problem = f"HTTP {status} code {code}"
                sent = status != 429
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if sent and not idempotent:
                # Wait as for a retry, so the caller's check sees the create if it landed.
                self.pause(method, path, attempts, deadline, delays, retry_after, problem)
                raise AmbiguousWrite(
                    f"{method} {path} failed with {problem}; it may have been applied"
                )
            self.pause(method, path, attempts, deadline, delays, retry_after, problem)

    def deadline(self) -> float:
        """When the retry budget of a request starting now runs out."""
        return time.monotonic() + self.retry.budget_seconds

    def straggle_seconds(self) -> float:
        """How long after it was sent an unanswered request may still be applied: the bound
        every wait for one uses (in a run, after a kill, for a create)."""
        return self.timeout + STRAGGLER_MARGIN_SECONDS

    def pause(
        self,
        method: str,
        path: str,
        attempts: int,
        deadline: float,
        delays: Iterator[float],
        retry_after: float | None,
        problem: str,
    ) -> None:
        """Back off before the next attempt, or give up when the budget would be exceeded."""
        wait = self.retry.wait_for(next(delays), retry_after)
        if time.monotonic() + wait > deadline:
            raise RetriesExhausted(
                f"{method} {path} still failing after {attempts} attempts over the "
                f"{self.retry.budget_seconds:.0f}s retry budget (retry_max_seconds); last "
                f"failure: {problem}; last x-pinterest-rid {self.last_rid or '-'}. "
                "Pinterest or the network is unavailable: run again later (the next run "
                "resumes from the last checkpoint)"
            )
        with self._counters:
            self.retries += 1
        self.logger.warning("%s %s: %s; retry %d in %.2fs", method, path, problem, attempts, wait)
        if self.stop_event.wait(wait):
            raise Interrupted(f"stopped while retrying {method} {path}")

    def paginate(self, path: str, page_size: int = 250) -> Iterator[dict[str, Any]]:
        """Every item of a bookmark-paginated list endpoint."""
        bookmark: str | None = None
        while True:
            params: dict[str, Any] = {"page_size": page_size}
            if bookmark:
                params["bookmark"] = bookmark
            page = self.request("GET", path, params=params)
            yield from page.get("items") or []
            bookmark = page.get("bookmark")
            if not bookmark:
                return


def _maybe_sent(exc: requests.RequestException) -> bool:
    """Whether a connection error may have happened after the request went out."""
    text = repr(exc)
    return not any(
        marker in text
        for marker in ("NewConnectionError", "Connection refused", "Name or service not known")
    )


def upload_exceptions(answer: Any) -> int:
    """How many entries the `exceptions` ("Customer list errors") of a CustomerList answer
    holds; 0 when none. The spec names the field but not its content, so callers only warn
    (by count: an entry might name an identifier) and still count the write as confirmed."""
    found = answer.get("exceptions") if isinstance(answer, dict) else None
    if isinstance(found, (dict, list)):
        return len(found)
    return 1 if found else 0


_JSON_CONTENT = {"Content-Type": "application/json"}


def records_body(operation: str, records: list[str]) -> bytes:
    """A Customer List PATCH body, encoded once for all its attempts.

    A request of 10,000 identifiers is a ~650 KB body: `requests`' `json=` kept the joined
    records, their JSON text and its bytes (two held while the request is in flight, each a
    block of its own: see target.py `_map_large_blocks`). Here: the text, then its bytes.
    Identifiers are hex digests or checked external ids; printable ASCII without a quote or
    backslash goes into the text as it is, anything else is escaped by `json`.
    """
    head = '{"operation_type":"' + operation + '","records":"'
    if records:
        items = list(records)
        items[0] = head + items[0]
        items[-1] += '"}'
        text = ",".join(items)
        end = len(text) - 2
        if (
            text.isascii()
            and text.isprintable()
            and text.find('"', len(head), end) < 0
            and text.find("\\", len(head), end) < 0
        ):
            return text.encode("ascii")
    return json.dumps(
        {"operation_type": operation, "records": ",".join(records)}, separators=(",", ":")
    ).encode("ascii")


def _json_body(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {"items": body}


def _error_fields(response: requests.Response) -> tuple[Any, str]:
    try:
        body = response.json()
    except ValueError:
        return None, (response.text or "")[:200]
    if not isinstance(body, dict):
        return None, str(body)[:200]
    return body.get("code"), str(body.get("message", ""))[:500]


def _is_too_large(status: int, message: str) -> bool:
    if status == 413:
        return True
    lowered = message.lower()
    return status == 400 and "record" in lowered and any(w in lowered for w in _TOO_LARGE_WORDS)
