"""The control side: state snapshots, faults and settings from Python or under /_emulator."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from target_pinterest_audiences.emulator.faults import _parse_fault
from target_pinterest_audiences.emulator.state import _CONFIG_KEYS, EmulatorState, _Config
from target_pinterest_audiences.emulator.transport import _FramingError, _Handler
from target_pinterest_audiences.emulator.validation import _int, _number, _opt_int

WRITE_WINDOW_S = 60.0
# A default that means "not given", so configure() changes only the settings it is passed.
_UNSET: Any = object()


def max_events_in_window(times: Iterable[float], window: float = WRITE_WINDOW_S) -> int:
    """Return the largest number of events that fall in any half-open window of ``window`` s.

    Why: a client-side limiter that allows N writes per rolling minute keeps this at most N, so
    tests can prove the limit held. Sort plus two pointers keeps it O(n log n) for long logs.
    Two events are in one window when their times differ by less than ``window``.
    """
    ts = sorted(times)
    best = 0
    lo = 0
    for hi, t in enumerate(ts):
        while t - ts[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


class ControlApi(EmulatorState):
    """The control side (a mixin of the Emulator): what tests call from Python, and the
    /_emulator endpoints that call the same methods."""

    def state(self, *, members: bool = True, requests: bool = True) -> dict[str, Any]:
        """A JSON-ready snapshot; ``members=False`` skips big member lists, ``requests`` the log."""
        with self._lock:
            lists = [
                (lst, list(lst.members) if members else None, len(lst.members))
                for lst in self._lists.values()
            ]
            list_meta: list[dict[str, Any]] = [
                {
                    "id": lst.id,
                    "ad_account_id": lst.ad_account_id,
                    "name": lst.name,
                    "list_type": lst.list_type,
                    "num_batches": lst.num_batches,
                    "num_uploaded_user_records": lst.uploaded,
                    "num_removed_user_records": lst.removed,
                    "num_members": n,
                    "matched_users": lst.settle(self._cfg),
                }
                for lst, _, n in lists
            ]
            audiences = [a.api(self._lists, self._cfg) for a in self._audiences.values()]
            log = [dict(entry) for entry in self._log] if requests else None
            write_times = list(self._write_times)
            faults = [f.to_dict() for f in self._faults]
            config = self._cfg.to_dict()
        # Sorting and the window scan happen outside the lock: they can be slow for big states.
        out_lists = []
        for meta, (_, raw_members, _) in zip(list_meta, lists, strict=True):
            if raw_members is not None:
                meta["members"] = sorted(raw_members)
            out_lists.append(meta)
        result: dict[str, Any] = {
            "lists": out_lists,
            "audiences": audiences,
            "max_writes_in_any_60s": max_events_in_window(write_times),
            "faults": faults,
            "config": config,
        }
        if log is not None:
            result["requests"] = log
        return result

    def add_fault(
        self,
        kind: str,
        *,
        status: int | None = None,
        code: int | None = None,
        message: str | None = None,
        retry_after: int | None = None,
        delay_ms: int = 0,
        methods: Sequence[str] | None = None,
        path_contains: str | None = None,
        every: int = 1,
        count: int | None = None,
        skip: int = 0,
    ) -> dict[str, Any]:
        """Append a fault rule (same fields as POST /_emulator/faults); returns it as a dict."""
        rule = {
            "kind": kind,
            "status": status,
            "code": code,
            "message": message,
            "retry_after": retry_after,
            "delay_ms": delay_ms,
            "methods": list(methods) if methods is not None else None,
            "path_contains": path_contains,
            "every": every,
            "count": count,
            "skip": skip,
        }
        return self.add_faults([rule])[0]

    def add_faults(self, rules: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append several rules at once, all or none (ValueError if any is invalid)."""
        parsed = [_parse_fault(rule) for rule in rules]
        with self._lock:
            self._faults.extend(parsed)
            return [f.to_dict() for f in parsed]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def configure(
        self,
        *,
        under_review: Iterable[str] = _UNSET,
        disapproved: Iterable[str] = _UNSET,
        record_cap: int | None = _UNSET,
        write_delay_ms: int = _UNSET,
        delay_ms: int = _UNSET,
        access_token_ttl_requests: int | None = _UNSET,
        refresh_single_use: bool = _UNSET,
        writes_per_minute_limit: int | None = _UNSET,
        match_delay_seconds: float = _UNSET,
        match_fraction: float = _UNSET,
    ) -> dict[str, Any]:
        """Change only the settings passed; returns the whole configuration.

        Setting ``access_token_ttl_requests`` restarts every token's request count, so the
        limit counts from now (the seeded token is otherwise already in use). The matching
        settings apply to writes from now on.
        """
        given = {
            "under_review": under_review,
            "disapproved": disapproved,
            "record_cap": record_cap,
            "write_delay_ms": write_delay_ms,
            "delay_ms": delay_ms,
            "access_token_ttl_requests": access_token_ttl_requests,
            "refresh_single_use": refresh_single_use,
            "writes_per_minute_limit": writes_per_minute_limit,
            "match_delay_seconds": match_delay_seconds,
            "match_fraction": match_fraction,
        }
        return self._apply_config({k: v for k, v in given.items() if v is not _UNSET})

    def reset(self, *, config: bool = False) -> None:
        """Forget lists, audiences, the request log, faults and issued tokens.

        The seeded credentials are restored (a single-use refresh may have consumed them).
        Settings survive unless ``config=True``.
        """
        with self._lock:
            self._lists.clear()
            self._audiences.clear()
            self._log.clear()
            self._write_times.clear()
            self._admitted_writes.clear()
            self._faults.clear()
            self._codes.clear()
            self._access_tokens.clear()
            self._refresh_tokens.clear()
            if config:
                self._cfg = _Config()
            self._seed_credentials()

    def _apply_config(self, settings: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(settings) - set(_CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(map(str, unknown))}")
        new: dict[str, Any] = {}
        for key in ("under_review", "disapproved"):
            if key in settings:
                value = settings[key]
                if isinstance(value, str) or not isinstance(value, Iterable):
                    raise ValueError(f"{key}: must be a list of ad account ids")
                ids = frozenset(str(v) for v in value)
                strangers = sorted(ids - self._ad_accounts)
                if strangers:
                    raise ValueError(f"{key}: not a configured ad account: {', '.join(strangers)}")
                new[key] = ids
        for key in ("record_cap",):
            if key in settings:
                new[key] = _opt_int(key, settings[key], 0)
        for key in ("access_token_ttl_requests", "writes_per_minute_limit"):
            if key in settings:
                new[key] = _opt_int(key, settings[key], 1)
        for key in ("write_delay_ms", "delay_ms"):
            if key in settings:
                new[key] = _int(key, settings[key], 0)
        if "match_delay_seconds" in settings:
            new["match_delay_seconds"] = _number(
                "match_delay_seconds", settings["match_delay_seconds"], 0.0
            )
        if "match_fraction" in settings:
            new["match_fraction"] = _number("match_fraction", settings["match_fraction"], 0.0, 1.0)
        if "refresh_single_use" in settings:
            if not isinstance(settings["refresh_single_use"], bool):
                raise ValueError("refresh_single_use: must be true or false")
            new["refresh_single_use"] = settings["refresh_single_use"]
        with self._lock:
            for key, value in new.items():
                setattr(self._cfg, key, value)
            if "access_token_ttl_requests" in new:
                for token in self._access_tokens.values():
                    token.uses = 0
            return self._cfg.to_dict()

    # -- control API --------------------------------------------------------------------------

    def _serve_control(self, h: _Handler) -> None:
        """/_emulator: no auth, no log, no faults, no delays."""
        rid = secrets.token_hex(8)
        split = urlsplit(h.path)
        path, method = split.path.rstrip("/"), h.command
        try:
            raw = h.read_body()
            data = json.loads(raw.decode("utf-8")) if raw.strip() else None
            query = dict(parse_qsl(split.query, keep_blank_values=True))
            if path == "/_emulator/state" and method == "GET":
                flags = {}
                for key, value in query.items():
                    if key not in ("members", "requests") or value not in ("0", "1"):
                        raise ValueError("state takes members=0|1 and requests=0|1")
                    flags[key] = value == "1"
                reply: Any = self.state(**flags)
            elif path == "/_emulator/faults" and method == "GET":
                reply = {"faults": self.state(requests=False, members=False)["faults"]}
            elif path == "/_emulator/faults" and method == "POST":
                rules: list[Any] = data if isinstance(data, list) else [data]
                reply = {"faults": self.add_faults(rules)}
            elif path == "/_emulator/faults" and method == "DELETE":
                self.clear_faults()
                reply = {"faults": []}
            elif path == "/_emulator/config" and method == "GET":
                reply = {"config": self._apply_config({})}
            elif path == "/_emulator/config" and method == "POST":
                if not isinstance(data, dict):
                    raise ValueError("config body must be a JSON object")
                reply = {"config": self._apply_config(data)}
            elif path == "/_emulator/reset" and method == "POST":
                options = data if isinstance(data, dict) else {}
                if set(options) - {"config"}:
                    raise ValueError("reset takes only {'config': bool}")
                self.reset(config=bool(options.get("config", False)))
                reply = {"reset": True}
            else:
                h.send_reply(404, {"code": 404, "message": "Not found."}, rid, {})
                return
        except _FramingError as exc:
            h.close_connection = True
            h.send_reply(400, {"code": 1, "message": str(exc)}, rid, {})
            return
        except ValueError as exc:  # also JSON and UTF-8 errors
            h.send_reply(400, {"code": 1, "message": str(exc)}, rid, {})
            return
        h.send_reply(200, reply, rid, {})
