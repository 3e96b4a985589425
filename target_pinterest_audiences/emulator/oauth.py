"""OAuth: the consent page, the token endpoint, and bearer-token checks of API calls."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from target_pinterest_audiences.emulator.errors import ApiError, _auth_failed, _bad, _safe_name
from target_pinterest_audiences.emulator.state import (
    REFRESH_TOKEN_TTL_S,
    EmulatorState,
    _AccessToken,
    _AuthCode,
    _RefreshToken,
)
from target_pinterest_audiences.emulator.transport import _Reply, _Request
from target_pinterest_audiences.emulator.validation import _check_fields, _media_type, _single_query

AUTH_CODE_TTL_S = 600


def _parse_scope(raw: str) -> frozenset[str]:
    return frozenset(s for s in re.split(r"[,\s]+", raw) if s)


def _format_scope(scope: Iterable[str]) -> str:
    return ",".join(sorted(scope))


class OAuthApi(EmulatorState):
    """OAuth (a mixin of the Emulator): bearer tokens on API calls, the consent page and the
    token endpoint."""

    def _authenticate(self, req: _Request, scope: str) -> None:
        scheme, _, token = str(req.headers.get("Authorization") or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _auth_failed()
        with self._lock:
            record = self._access_tokens.get(token)
            ttl = self._cfg.access_token_ttl_requests
            if (
                record is None
                or record.expires_at <= time.time()
                or (ttl is not None and record.uses >= ttl)
            ):
                raise _auth_failed()
            record.uses += 1
            if scope not in record.scope:
                raise ApiError(401, 3, f"Authentication failed: missing required scope {scope}.")

    # -- OAuth ----------------------------------------------------------------------------------

    def _authorize(self, req: _Request) -> _Reply:
        """The consent page, approved at once: 302 to redirect_uri with a single-use code."""
        query = _single_query(req, ("client_id", "redirect_uri", "response_type", "scope", "state"))
        if query.get("client_id") != self._client_id:
            raise _bad("client_id: unknown application")
        redirect_uri = query.get("redirect_uri")
        if not redirect_uri:
            raise _bad("redirect_uri: required")
        if query.get("response_type") != "code":
            raise _bad("response_type: must be code")
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = _AuthCode(
                client_id=self._client_id,
                redirect_uri=redirect_uri,
                scope=_parse_scope(query.get("scope", "")),
                expires_at=time.time() + AUTH_CODE_TTL_S,
            )
        params = {"code": code}
        if "state" in query:
            params["state"] = query["state"]
        sep = "&" if "?" in redirect_uri else "?"
        return 302, None, {"Location": f"{redirect_uri}{sep}{urlencode(params)}"}

    def _basic_auth_ok(self, req: _Request) -> bool:
        scheme, _, credentials = str(req.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            raw = base64.b64decode(credentials.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        client_id, sep, secret = raw.partition(b":")
        return (
            sep == b":"
            and secrets.compare_digest(client_id, self._client_id.encode())
            and secrets.compare_digest(secret, self._client_secret.encode())
        )

    def _token(self, req: _Request) -> _Reply:
        """POST /v5/oauth/token; errors never echo a code or token."""
        if not self._basic_auth_ok(req):
            raise _auth_failed()
        _single_query(req, ())
        if _media_type(req.headers) != "application/x-www-form-urlencoded":
            raise _bad("Content-Type: must be application/x-www-form-urlencoded")
        try:
            pairs = parse_qsl(req.body.decode("utf-8"), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            raise _bad("body: not a valid form") from None
        form: dict[str, str] = {}
        for key, value in pairs:
            if key in form:
                raise _bad(f"{_safe_name(key)}: given more than once")
            form[key] = value
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            allowed = ("grant_type", "code", "redirect_uri", "continuous_refresh")
            required: tuple[str, ...] = ("code", "redirect_uri")
        elif grant_type == "refresh_token":
            allowed = ("grant_type", "refresh_token", "scope", "continuous_refresh")
            required = ("refresh_token",)
        elif grant_type is None:
            raise _bad("grant_type: required field is missing")
        else:
            raise _bad("grant_type: must be authorization_code or refresh_token")
        _check_fields(form, allowed, required)
        if form.get("continuous_refresh", "true") not in ("true", "false"):
            raise _bad("continuous_refresh: must be true or false")
        now = time.time()
        with self._lock:
            if grant_type == "authorization_code":
                grant = self._codes.get(form["code"])
                if grant is None or grant.expires_at <= now or grant.client_id != self._client_id:
                    self._codes.pop(form["code"], None)
                    raise ApiError(400, 1104, "Invalid or expired authorization code.")
                if grant.redirect_uri != form["redirect_uri"]:
                    raise ApiError(
                        400, 1104, "redirect_uri does not match the one used to authorize."
                    )
                del self._codes[form["code"]]
                answer = self._issue_tokens(grant.scope, grant.scope, "authorization_code", now)
                return 200, answer, {}
            refresh = self._refresh_tokens.get(form["refresh_token"])
            if refresh is None or refresh.expires_at <= now:
                raise ApiError(400, 1104, "Invalid or expired refresh token.")
            scope = refresh.scope
            if "scope" in form:
                scope = _parse_scope(form["scope"])
                if not scope <= refresh.scope:
                    raise _bad("scope: more than the refresh token was granted")
            if self._cfg.refresh_single_use:
                del self._refresh_tokens[form["refresh_token"]]
            return 200, self._issue_tokens(scope, refresh.scope, "refresh_token", now), {}

    def _issue_tokens(
        self, scope: frozenset[str], refresh_scope: frozenset[str], response_type: str, now: float
    ) -> dict[str, Any]:
        """New access and refresh tokens; the refresh token is always new (continuous refresh)."""
        access = "pina_" + secrets.token_urlsafe(32)
        refresh = "pinr_" + secrets.token_urlsafe(32)
        self._access_tokens[access] = _AccessToken(scope, now + self._access_ttl_s)
        self._refresh_tokens[refresh] = _RefreshToken(refresh_scope, now + REFRESH_TOKEN_TTL_S)
        return {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": self._access_ttl_s,
            "scope": _format_scope(scope),
            "refresh_token": refresh,
            "refresh_token_expires_in": REFRESH_TOKEN_TTL_S,
            "refresh_token_expires_at": int(now + REFRESH_TOKEN_TTL_S),
            "response_type": response_type,
        }
