"""The emulator's data: customer lists, audiences, tokens, settings, and how matching goes."""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from target_pinterest_audiences.emulator.validation import _ID_RE

if TYPE_CHECKING:
    from target_pinterest_audiences.emulator.faults import _Fault

READY_MIN_SIZE = 100
# Pinners per country an ACTALIKE audience is drawn from: invented round figures (Pinterest
# publishes none per country), so that an actalike's size is percentage% of them.
COUNTRY_PINNERS = {"US": 90_000_000, "CA": 10_000_000, "GB": 15_000_000}
SEEDED_SCOPE = frozenset({"ads:read", "ads:write"})
REFRESH_TOKEN_TTL_S = 60 * 24 * 3600
_CONFIG_KEYS = (
    "under_review",
    "disapproved",
    "record_cap",
    "write_delay_ms",
    "delay_ms",
    "access_token_ttl_requests",
    "refresh_single_use",
    "writes_per_minute_limit",
    "match_delay_seconds",
    "match_fraction",
)


def _matches(identifier: str, fraction: float) -> bool:
    """Whether an identifier belongs to a Pinterest user (deterministic; see the docstring)."""
    return fraction >= 1.0 or zlib.crc32(identifier.encode()) < fraction * 2**32


@dataclass
class _CustomerList:
    id: str
    ad_account_id: str
    name: str
    list_type: str
    created: int
    updated: int
    members: set[str]
    num_batches: int = 1
    uploaded: int = 0
    removed: int = 0
    #: Matched users at the last completed matching; None until the first one completes.
    matched: int | None = None
    #: Whether a write waits to be matched, since when (time.monotonic()), and its share.
    match_pending: bool = False
    written_at: float = 0.0
    match_fraction: float = 1.0

    def wrote(self, cfg: _Config) -> None:
        """After a write: the members as they are now wait to be matched.

        Call settle() before changing the members, so a matching already due counts the
        members it was due for.
        """
        self.match_pending = True
        self.written_at = time.monotonic()
        self.match_fraction = cfg.match_fraction

    def settle(self, cfg: _Config) -> int | None:
        """Matched users now (None: never matched yet); completes a matching that is due."""
        if self.match_pending and time.monotonic() >= self.written_at + cfg.match_delay_seconds:
            self.match_pending = False
            fraction = self.match_fraction
            if fraction >= 1.0:
                self.matched = len(self.members)
            else:
                self.matched = sum(1 for m in self.members if _matches(m, fraction))
        return self.matched

    def api(self, cfg: _Config, *, just_written: bool = False) -> dict[str, Any]:
        """The CustomerList answer; PROCESSING after a write until it is matched."""
        matched = self.settle(cfg)
        if just_written or self.match_pending or matched is None:
            status = "PROCESSING"
        else:
            status = "READY" if matched >= READY_MIN_SIZE else "TOO_SMALL"
        return {
            "id": self.id,
            "ad_account_id": self.ad_account_id,
            "name": self.name,
            "created_time": self.created,
            "updated_time": self.updated,
            "num_batches": self.num_batches,
            "num_uploaded_user_records": self.uploaded,
            "num_removed_user_records": self.removed,
            "status": status,
            "type": "customerlist",
            "exceptions": {},
        }


@dataclass
class _Audience:
    id: str
    ad_account_id: str
    name: str
    audience_type: str
    rule: dict[str, Any]
    description: str | None
    created: int
    updated: int
    #: When its rule was set (time.monotonic()): an ACTALIKE is computed match_delay_seconds later.
    rule_set_at: float = 0.0

    def api(self, lists: dict[str, _CustomerList], cfg: _Config) -> dict[str, Any]:
        """The Audience answer.

        CUSTOMER_LIST: size is the list's matched users (null until matched). ACTALIKE: null and
        INITIALIZING until computed (``match_delay_seconds`` after its rule was set), then READY
        with ``percentage`` percent of the country's emulated Pinners.
        """
        size: int | None = None
        if self.audience_type == "CUSTOMER_LIST":
            lst = lists.get(str(self.rule.get("customer_list_id")))
            size = lst.settle(cfg) if lst is not None else None
        elif (
            self.audience_type == "ACTALIKE"
            and time.monotonic() >= self.rule_set_at + cfg.match_delay_seconds
        ):
            pinners = COUNTRY_PINNERS.get(str(self.rule.get("country")), 0)
            size = pinners * int(self.rule.get("percentage") or 0) // 100
        if size is None:
            status = "INITIALIZING"
        else:
            status = "READY" if size >= READY_MIN_SIZE else "TOO_SMALL"
        return {
            "id": self.id,
            "ad_account_id": self.ad_account_id,
            "name": self.name,
            "audience_type": self.audience_type,
            "rule": json.loads(json.dumps(self.rule)),
            "description": self.description,
            "size": size,
            "status": status,
            "type": "audience",
            "created_by_company_name": None,
            "created_timestamp": self.created,
            "updated_timestamp": self.updated,
        }


@dataclass
class _AccessToken:
    scope: frozenset[str]
    expires_at: float
    uses: int = 0


@dataclass
class _RefreshToken:
    scope: frozenset[str]
    expires_at: float


@dataclass
class _AuthCode:
    client_id: str
    redirect_uri: str
    scope: frozenset[str]
    expires_at: float


@dataclass
class _Config:
    under_review: frozenset[str] = frozenset()
    disapproved: frozenset[str] = frozenset()
    record_cap: int | None = None
    write_delay_ms: int = 0
    delay_ms: int = 0
    access_token_ttl_requests: int | None = None
    refresh_single_use: bool = False
    writes_per_minute_limit: int | None = None
    match_delay_seconds: float = 0.0
    match_fraction: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "under_review": sorted(self.under_review),
            "disapproved": sorted(self.disapproved),
            "record_cap": self.record_cap,
            "write_delay_ms": self.write_delay_ms,
            "delay_ms": self.delay_ms,
            "access_token_ttl_requests": self.access_token_ttl_requests,
            "refresh_single_use": self.refresh_single_use,
            "writes_per_minute_limit": self.writes_per_minute_limit,
            "match_delay_seconds": self.match_delay_seconds,
            "match_fraction": self.match_fraction,
        }


class EmulatorState:
    """All the emulator's state, behind one lock; the API and control mixins work on it.

    Sleeps (delays) happen outside the lock so requests stay concurrent.
    """

    def __init__(
        self,
        ad_accounts: Iterable[str],
        client_id: str,
        client_secret: str,
        access_token: str | None,
        refresh_token: str | None,
        access_token_expires_in: int,
    ) -> None:
        self._ad_accounts = frozenset(str(a) for a in ad_accounts)
        for account in self._ad_accounts:
            if not _ID_RE.fullmatch(account):
                raise ValueError("ad_accounts: each must be a string of 1 to 18 digits")
        self._client_id = client_id
        self._client_secret = client_secret
        self._seed_access = access_token
        self._seed_refresh = refresh_token
        self._access_ttl_s = int(access_token_expires_in)
        self._lock = threading.Lock()
        self._cfg = _Config()
        self._next_id = 2542620639001
        self._lists: dict[str, _CustomerList] = {}
        self._audiences: dict[str, _Audience] = {}
        self._log: list[dict[str, Any]] = []
        self._write_times: list[float] = []
        self._admitted_writes: deque[float] = deque()
        self._faults: list[_Fault] = []
        self._access_tokens: dict[str, _AccessToken] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._codes: dict[str, _AuthCode] = {}
        self._seed_credentials()

    def _seed_credentials(self) -> None:
        """The access and refresh tokens given at start are valid (again, after a reset)."""
        now = time.time()
        if self._seed_access:
            self._access_tokens[self._seed_access] = _AccessToken(
                SEEDED_SCOPE, now + self._access_ttl_s
            )
        if self._seed_refresh:
            self._refresh_tokens[self._seed_refresh] = _RefreshToken(
                SEEDED_SCOPE, now + REFRESH_TOKEN_TTL_S
            )

    def _new_id(self) -> str:
        """Ids are digit strings rising with creation time, as the spec's `order` assumes."""
        self._next_id += 1
        return str(self._next_id)
