"""Unit tests of the client's arithmetic: backoff delays, Retry-After, the write limiter,
and the token file. End-to-end behaviour is tested against the emulator elsewhere."""

from __future__ import annotations

import json
import logging
import os
import random
import stat
import threading

import pytest

from target_pinterest_audiences.pinterest.client import (
    RetryPolicy,
    _is_too_large,
    parse_retry_after,
    records_body,
)
from target_pinterest_audiences.pinterest.limits import SlidingWindowLimiter, WaitClock
from target_pinterest_audiences.pinterest.tokens import TokenManager, TokenStore, token_record


@pytest.mark.parametrize(
    "records",
    [
        ["a" * 64, "0123456789abcdef" * 4],  # hex digests: written as they are
        ["lr-1"],
        ['quote"d', "back\\slash", "comma,in,one"],  # escaped by json, never raw
        ["caf\u00e9", "\u200bzero-width", "tab\there", "nl\nline", "\x7fdel"],
        [],
    ],
)
@pytest.mark.parametrize("operation", ["ADD", "REMOVE"])
def test_a_records_body_is_the_json_of_its_records(operation: str, records: list[str]) -> None:
    """The PATCH body is encoded by hand for speed and memory; whatever the identifiers, it
    must decode to exactly what `json=` would have sent."""
    body = records_body(operation, records)
    assert json.loads(body) == {"operation_type": operation, "records": ",".join(records)}
    body.decode("ascii")  # JSON text as ASCII: any other character is escaped


def test_full_jitter_stays_under_the_exponential_ceiling() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=60.0)
    ceilings = [1, 2, 4, 8, 16, 32, 60, 60, 60]
    for seed in range(50):
        delays = policy.delays(random.Random(seed))
        for ceiling in ceilings:
            delay = next(delays)
            assert 0 <= delay <= ceiling


def test_full_jitter_spreads_over_the_whole_range() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=60.0)
    sixth = []
    for seed in range(400):
        delays = policy.delays(random.Random(seed))
        for _ in range(5):
            next(delays)
        sixth.append(next(delays))  # ceiling 32
    assert min(sixth) < 4 and max(sixth) > 28


def test_retry_after_is_a_floor_and_max_delay_a_cap() -> None:
    policy = RetryPolicy(max_delay=10.0)
    assert policy.wait_for(0.5, retry_after=7.0) == 7.0
    assert policy.wait_for(12.0, retry_after=None) == 10.0
    assert policy.wait_for(3.0, retry_after=1.0) == 3.0
    assert policy.wait_for(0.1, retry_after=120.0) == 120.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-1", None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_too_large_detection() -> None:
    assert _is_too_large(413, "")
    assert _is_too_large(400, "Too many records in one request")
    assert not _is_too_large(400, "records: entry 3 is not a lowercase SHA-256 hex digest")
    assert not _is_too_large(429, "too many requests")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_limiter_never_allows_more_than_limit_in_any_window() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(5, window=60.0, clock=clock, sleep=clock.sleep)
    done = []
    for _ in range(23):
        limiter.acquire()
        clock.now += 0.25  # the request takes a while
        limiter.release()
        done.append(clock.now)
    for i in range(len(done) - 5):
        # the call 5 later started a full window after this one completed
        assert done[i + 5] - 0.25 >= done[i] + 60.0
    # and it did not wait longer than needed: 23 calls need 4 full windows
    assert done[-1] - done[0] < 4 * 60.0 + 23 * 0.25 + 1


def test_limiter_does_not_wait_under_the_limit() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(400, clock=clock, sleep=clock.sleep)
    for _ in range(400):
        limiter.acquire()
        limiter.release()
    assert clock.now == 1000.0
    assert limiter.waited_seconds == 0


def test_limiter_wait_shows_while_it_lasts() -> None:
    """The progress line reads waited_seconds from another thread during a long wait."""
    clock = FakeClock()
    seen_during = []

    def sleep(seconds: float) -> None:
        clock.now += seconds / 2
        seen_during.append(limiter.waited_seconds)
        clock.now += seconds / 2

    limiter = SlidingWindowLimiter(1, window=60.0, clock=clock, sleep=sleep)
    limiter.acquire()
    limiter.release()
    limiter.acquire()  # waits a full window
    limiter.release()
    assert seen_during == [pytest.approx(30.005)]
    assert limiter.waited_seconds == pytest.approx(60.01)


def test_wait_clock_counts_overlapping_waits_once() -> None:
    clock = FakeClock()
    waits = WaitClock(clock)
    waits.begin()
    clock.now += 5
    waits.begin()  # a second thread waits too
    clock.now += 5
    waits.end()
    assert waits.seconds == 10
    clock.now += 5
    waits.end()
    clock.now += 100  # nobody waits: not counted
    assert waits.seconds == 15


def test_token_store_writes_atomically_with_mode_0600(tmp_path) -> None:
    path = tmp_path / "deep" / "tokens.json"
    store = TokenStore(path)
    assert store.load() is None
    store.save({"access_token": "a1", "refresh_token": "r1"})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    store.save({"access_token": "a2", "refresh_token": "r2"})
    assert json.loads(path.read_text()) == {"access_token": "a2", "refresh_token": "r2"}
    assert [p.name for p in path.parent.iterdir()] == ["tokens.json"]  # no temp file left


def test_token_record_keeps_absolute_expiry_times() -> None:
    record = token_record(
        {
            "access_token": "a",
            "expires_in": 100,
            "refresh_token": "r",
            "refresh_token_expires_in": 1000,
            "scope": "ads:read,ads:write",
        },
        now=5000.0,
    )
    assert record["access_token_expires_at"] == 5100
    assert record["refresh_token_expires_at"] == 6000
    assert record["refresh_token"] == "r"


def test_stored_tokens_win_over_config(tmp_path) -> None:
    store = TokenStore(tmp_path / "t.json")
    store.save({"access_token": "stored-access", "refresh_token": "stored-refresh"})
    manager = TokenManager(
        api_url="http://127.0.0.1:9",
        client_id="c",
        client_secret="s",
        access_token="config-access",
        refresh_token="config-refresh",
        store=store,
        logger=logging.getLogger("test"),
    )
    assert manager.access_token() == "stored-access"


def test_expiring_access_token_triggers_a_refresh(tmp_path, monkeypatch) -> None:
    store = TokenStore(tmp_path / "t.json")
    store.save({"access_token": "old", "refresh_token": "r0", "access_token_expires_at": 1})
    calls = []

    def fake_request_token(api_url, client_id, client_secret, form, timeout=60.0, session=None):
        calls.append(form)
        return {
            "access_token": "new",
            "expires_in": 3600,
            "refresh_token": "r1",
            "refresh_token_expires_in": 5_000_000,
        }

    monkeypatch.setattr(
        "target_pinterest_audiences.pinterest.tokens.request_token", fake_request_token
    )
    manager = TokenManager(
        api_url="http://x",
        client_id="c",
        client_secret="s",
        access_token=None,
        refresh_token=None,
        store=store,
        logger=logging.getLogger("test"),
    )
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(manager.access_token())) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["new"] * 4
    assert calls == [{"grant_type": "refresh_token", "refresh_token": "r0"}]  # once, not 4 times
    assert store.load()["refresh_token"] == "r1"


def test_customer_list_errors_in_a_200_answer_warn_once_by_count(caplog) -> None:
    """The spec's CustomerList.exceptions ("Customer list errors") has no published shape:
    warn by count only (an entry might hold an identifier) and once per run."""
    from target_pinterest_audiences.pinterest.client import upload_exceptions
    from target_pinterest_audiences.sync.report import Report

    assert upload_exceptions({"id": "1", "exceptions": {}}) == 0
    assert upload_exceptions({"id": "1"}) == 0
    assert upload_exceptions(None) == 0
    assert upload_exceptions({"exceptions": {"1": "abc", "2": "def"}}) == 2
    assert upload_exceptions({"exceptions": ["x"]}) == 1
    assert upload_exceptions({"exceptions": "some error"}) == 1

    report = Report(ad_account_id="1", audience_name="a", dry_run=False)
    log = logging.getLogger("test-exceptions")
    secret = "f" * 64
    with caplog.at_level(logging.WARNING):
        report.note_upload_exceptions(0, "rid-0", log)
        report.note_upload_exceptions(upload_exceptions({"exceptions": {secret: 1}}), "rid-1", log)
        report.note_upload_exceptions(3, "rid-2", log)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "rid-1" in warnings[0] and "1 error(s)" in warnings[0]
    assert secret not in caplog.text
    assert report.upload_exception_answers == 2
