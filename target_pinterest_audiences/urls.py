"""Rules for the URLs the user gives: secrets masked for display, plain HTTP only on loopback.

`mask_url` shows a database URL without its secrets: the password of the user part, and the
value of every query parameter named like a secret (``password``, ``sslpassword``, ``token``,
``secret``, ``key``...). `api_url_problem` allows ``http://`` only for a loopback host (the
emulator): tokens and the client secret must never cross a network unencrypted.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

MASK = "***"
#: A query parameter whose name holds one of these words carries a secret.
_SECRET_NAME = re.compile(r"pass|pwd|secret|token|key|credential|auth", re.IGNORECASE)
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def mask_url(url: str) -> str:
    """`url` with every secret part replaced by *** (for logs, errors, reports)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return MASK  # not even a URL: it may be anything, a password included
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = []
        for piece in query.split("&"):
            name, eq, _value = piece.partition("=")
            decoded = urllib.parse.unquote_plus(name)
            pairs.append(f"{name}={MASK}" if eq and _SECRET_NAME.search(decoded) else piece)
        query = "&".join(pairs)
    fragment = MASK if parts.fragment else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def is_loopback_host(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or the name localhost (as written in a URL)."""
    if not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_url_problem(url: str, where: str) -> str | None:
    """Why `url` cannot be the API's base URL, or None. `where` names the setting or flag."""
    try:
        parts = urllib.parse.urlsplit(str(url))
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        return f"{where} must be an https URL such as https://api.pinterest.com/v5"
    if parts.scheme == "http" and not is_loopback_host(host):
        return (
            f"{where} uses plain http:// for {host}, which would send tokens and the client "
            "secret unencrypted: use https://, or http:// only for a loopback address "
            "(127.0.0.1, ::1, localhost: the emulator)"
        )
    return None
