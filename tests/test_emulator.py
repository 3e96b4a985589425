"""Tests for the local Pinterest API v5 emulator, over real HTTP.

Why: every other test of the target trusts this emulator to behave like a strict Pinterest, so
its validation, auth, OAuth, faults and bookkeeping must themselves be proven.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from target_pinterest_audiences.emulator import Emulator, max_events_in_window
from target_pinterest_audiences.emulator import oauth as emulator_oauth

ACCOUNT = "549755885175"
OTHER_ACCOUNT = "549755885176"
STRANGER_ACCOUNT = "549755885999"
TOKEN = "emu-access-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
REFRESH = "emu-refresh-token"
CLIENT_ID = "emu-client-id"
CLIENT_SECRET = "emu-client-secret"
REDIRECT = "http://localhost:8765/callback"
REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 10


def h(i: int | str) -> str:
    """A distinctive lowercase SHA-256 hex digest, like the target uploads."""
    return hashlib.sha256(f"user-{i}@example.com".encode()).hexdigest()


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(ad_accounts=(ACCOUNT, OTHER_ACCOUNT)) as server:
        yield server


@pytest.fixture
def api(emu: Emulator) -> Iterator[requests.Session]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    yield session
    session.close()


def lists_url(emu: Emulator, account: str = ACCOUNT) -> str:
    return f"{emu.api_url}/ad_accounts/{account}/customer_lists"


def audiences_url(emu: Emulator, account: str = ACCOUNT) -> str:
    return f"{emu.api_url}/ad_accounts/{account}/audiences"


def create_list(api: requests.Session, emu: Emulator, records: list[str], **extra: Any) -> dict:
    body = {"name": extra.pop("name", "crm"), "records": ",".join(records), **extra}
    resp = api.post(lists_url(emu), json=body, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    return resp.json()


def assert_error(resp: requests.Response, status: int, code: int, *needles: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"code", "message"}
    assert body["code"] == code, body
    for needle in needles:
        assert needle in body["message"], body
    return str(body["message"])


def basic(client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def authorize(emu: Emulator, scope: str = "ads:read,ads:write", **params: str) -> dict[str, Any]:
    """Run the consent redirect; return the query of the Location it redirects to."""
    query = {
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": scope,
        **params,
    }
    resp = requests.get(
        f"{emu.base_url}/oauth/", params=query, allow_redirects=False, timeout=TIMEOUT
    )
    assert resp.status_code == 302, resp.text
    location = resp.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def token_request(emu: Emulator, form: dict[str, str], **kwargs: Any) -> requests.Response:
    headers = kwargs.pop("headers", basic())
    return requests.post(
        f"{emu.api_url}/oauth/token", data=form, headers=headers, timeout=TIMEOUT, **kwargs
    )


# ---------------------------------------------------------------------------------------------
# Customer lists
# ---------------------------------------------------------------------------------------------


def test_customer_list_lifecycle_and_counters(emu: Emulator, api: requests.Session) -> None:
    created = create_list(api, emu, [h(1), h(2), h(3)], list_type="EMAIL")
    assert created["type"] == "customerlist"
    assert created["ad_account_id"] == ACCOUNT
    assert created["id"].isdigit()
    assert created["status"] == "PROCESSING"
    assert created["exceptions"] == {}
    assert (created["num_batches"], created["num_uploaded_user_records"]) == (1, 3)
    list_url = f"{lists_url(emu)}/{created['id']}"

    # ADD counts every record sent, even one already in the list.
    resp = api.patch(list_url, json={"operation_type": "ADD", "records": f"{h(3)},{h(4)}"})
    assert resp.status_code == 200, resp.text
    assert (resp.json()["num_batches"], resp.json()["num_uploaded_user_records"]) == (2, 5)
    # REMOVE counts every record sent, even one absent from the list.
    resp = api.patch(list_url, json={"operation_type": "REMOVE", "records": f"{h(1)},{h(99)}"})
    assert resp.status_code == 200, resp.text
    assert (resp.json()["num_batches"], resp.json()["num_removed_user_records"]) == (3, 2)

    got = api.get(list_url)
    assert got.status_code == 200
    assert got.json()["id"] == created["id"]
    assert got.json()["status"] == "TOO_SMALL"  # fewer than 100 members once settled

    state = emu.state()
    [lst] = state["lists"]
    assert lst["members"] == sorted([h(2), h(3), h(4)])
    assert lst["list_type"] == "EMAIL"
    assert lst["num_batches"] == 3
    ops = [(r["method"], r.get("operation_type"), r.get("n_records")) for r in state["requests"]]
    assert ops == [
        ("POST", None, 3),
        ("PATCH", "ADD", 2),
        ("PATCH", "REMOVE", 2),
        ("GET", None, None),
    ]
    # The log keeps counts, never the identifiers themselves.
    assert h(2) not in json.dumps(state["requests"])


def test_every_response_has_a_fresh_request_id(emu: Emulator, api: requests.Session) -> None:
    rids = {api.get(lists_url(emu)).headers["x-pinterest-rid"] for _ in range(3)}
    rids.add(requests.get(lists_url(emu), timeout=TIMEOUT).headers["x-pinterest-rid"])  # a 401
    assert len(rids) == 4
    assert [r["rid"] for r in emu.state()["requests"]] != []


def test_unknown_list_is_404_and_other_accounts_lists_are_invisible(
    emu: Emulator, api: requests.Session
) -> None:
    created = create_list(api, emu, [h(1)])
    assert_error(api.get(f"{lists_url(emu)}/123456"), 404, 404, "not found")
    resp = api.patch(f"{lists_url(emu)}/123456", json={"operation_type": "ADD", "records": h(2)})
    assert_error(resp, 404, 404)
    assert_error(api.get(f"{lists_url(emu, OTHER_ACCOUNT)}/{created['id']}"), 404, 404)
    assert api.get(lists_url(emu, OTHER_ACCOUNT)).json() == {"items": [], "bookmark": None}


def test_pagination_with_bookmarks_in_both_orders(emu: Emulator, api: requests.Session) -> None:
    ids = [create_list(api, emu, [h(i)], name=f"list-{i}")["id"] for i in range(5)]
    create_list_other = api.post(
        lists_url(emu, OTHER_ACCOUNT), json={"name": "elsewhere", "records": h(9)}
    )
    assert create_list_other.status_code == 200

    def walk(**params: str) -> tuple[list[str], list[int]]:
        seen: list[str] = []
        sizes: list[int] = []
        bookmark = None
        while True:
            query = dict(params, **({"bookmark": bookmark} if bookmark else {}))
            resp = api.get(lists_url(emu), params=query)
            assert resp.status_code == 200, resp.text
            page = resp.json()
            assert set(page) == {"items", "bookmark"}
            seen += [item["id"] for item in page["items"]]
            sizes.append(len(page["items"]))
            bookmark = page["bookmark"]
            if bookmark is None:
                return seen, sizes
            assert isinstance(bookmark, str) and bookmark

    assert walk(page_size="2") == (ids, [2, 2, 1])
    assert walk(page_size="2", order="DESCENDING") == (ids[::-1], [2, 2, 1])
    assert walk() == (ids, [5])  # default page size 25
    assert walk(page_size="5") == (ids, [5])  # an exact fit: no bookmark to an empty page

    first = api.get(lists_url(emu), params={"page_size": "2", "order": "DESCENDING"}).json()
    # A bookmark keeps its order, and refuses to serve another one.
    follow = api.get(lists_url(emu), params={"bookmark": first["bookmark"], "page_size": "2"})
    assert [i["id"] for i in follow.json()["items"]] == ids[2:0:-1]
    mixed = {"bookmark": first["bookmark"], "order": "ASCENDING"}
    assert_error(api.get(lists_url(emu), params=mixed), 400, 1, "bookmark")
    # A bookmark of one ad account is no good for another.
    assert_error(
        api.get(lists_url(emu, OTHER_ACCOUNT), params={"bookmark": first["bookmark"]}),
        400,
        1,
        "bookmark",
    )


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"page_size": "0"}, "page_size"),
        ({"page_size": "251"}, "page_size"),
        ({"page_size": "ten"}, "page_size"),
        ({"order": "ascending"}, "order"),
        ({"bookmark": "not-a-bookmark"}, "bookmark"),
        ({"name": "crm"}, "name"),  # no filter by name exists
    ],
)
def test_list_query_is_validated(
    emu: Emulator, api: requests.Session, params: dict[str, str], field: str
) -> None:
    assert_error(api.get(lists_url(emu), params=params), 400, 1, field)


# ---------------------------------------------------------------------------------------------
# Strict validation
# ---------------------------------------------------------------------------------------------

SECRET_A = h("secret-a")
SECRET_B = h("secret-b")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "records": SECRET_A, "color": "red"}, "color"),
        ({"name": "x", "records": SECRET_A, "list_type": "PHONE"}, "list_type"),
        ({"name": "x", "records": SECRET_A, "list_type": "email"}, "list_type"),
        ({"name": "x", "records": f"{SECRET_A},{SECRET_B.upper()}"}, "index 1"),
        ({"name": "x", "records": f"{SECRET_A},,{SECRET_B}"}, "index 1"),
        ({"name": "x", "records": f"{SECRET_A},"}, "index 1"),
        ({"name": "x", "records": f"{SECRET_A}, {SECRET_B}"}, "index 1"),
        ({"name": "x", "records": f"{SECRET_A},{SECRET_B[:-1]}"}, "index 1"),
        ({"name": "x", "records": "secret-a@example.com"}, "index 0"),
        ({"name": "x", "records": ""}, "records"),
        ({"name": "x", "records": [SECRET_A]}, "records"),
        ({"name": "x"}, "records"),
        ({"records": SECRET_A}, "name"),
        ({"name": "", "records": SECRET_A}, "name"),
        ({"name": 7, "records": SECRET_A}, "name"),
        ([{"name": "x", "records": SECRET_A}], "body"),
    ],
)
def test_create_list_rejects_bad_bodies_without_echoing_records(
    emu: Emulator, api: requests.Session, body: Any, field: str
) -> None:
    resp = api.post(lists_url(emu), json=body)
    message = assert_error(resp, 400, 1, field)
    for secret in (SECRET_A, SECRET_B, SECRET_B.upper(), SECRET_B[:-1], "secret-a@example.com"):
        assert secret not in resp.text
        assert secret[:16] not in message
    assert emu.state()["lists"] == []


def test_patch_list_validation(emu: Emulator, api: requests.Session) -> None:
    list_url = f"{lists_url(emu)}/{create_list(api, emu, [h(1)])['id']}"
    for body, field in [
        ({"operation_type": "APPEND", "records": h(2)}, "operation_type"),
        ({"operation_type": "add", "records": h(2)}, "operation_type"),
        ({"records": h(2)}, "operation_type"),
        ({"operation_type": "ADD"}, "records"),
        ({"operation_type": "ADD", "records": h(2), "name": "x"}, "name"),
        ({"operation_type": "ADD", "records": f"{h(2)},{SECRET_A.upper()}"}, "index 1"),
    ]:
        resp = api.patch(list_url, json=body)
        assert_error(resp, 400, 1, field)
        assert SECRET_A.upper() not in resp.text
    [lst] = emu.state()["lists"]
    assert (lst["members"], lst["num_batches"]) == ([h(1)], 1)  # nothing applied


def test_content_type_json_and_ids_are_enforced(emu: Emulator, api: requests.Session) -> None:
    body = json.dumps({"name": "x", "records": h(1)})
    resp = api.post(lists_url(emu), data=body, headers={"Content-Type": "text/plain"})
    assert_error(resp, 400, 1, "Content-Type")
    resp = api.post(lists_url(emu), data="{not json", headers={"Content-Type": "application/json"})
    assert_error(resp, 400, 1, "body")
    resp = api.post(lists_url(emu), data=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 200  # the same body with the right type passes
    assert_error(api.get(lists_url(emu, "12ab")), 400, 1, "ad_account_id")
    assert_error(api.get(f"{lists_url(emu)}/12ab"), 400, 1, "customer_list_id")
    assert_error(api.get(f"{audiences_url(emu)}/-1"), 400, 1, "audience_id")
    assert_error(api.get(f"{emu.api_url}/ad_accounts/{ACCOUNT}/campaigns"), 404, 404)
    assert_error(api.delete(lists_url(emu)), 405, 405)


# ---------------------------------------------------------------------------------------------
# Auth and account state
# ---------------------------------------------------------------------------------------------


def test_bearer_token_is_required(emu: Emulator) -> None:
    body = {"name": "x", "records": h(1)}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
        resp = requests.post(lists_url(emu), json=body, headers=headers, timeout=TIMEOUT)
        assert_error(resp, 401, 2, "Authentication failed.")
        resp = requests.get(lists_url(emu), headers=headers, timeout=TIMEOUT)
        assert_error(resp, 401, 2)
    assert emu.state()["lists"] == []


def test_unknown_ad_account_is_403_code_29(emu: Emulator, api: requests.Session) -> None:
    resp = api.post(lists_url(emu, STRANGER_ACCOUNT), json={"name": "x", "records": h(1)})
    assert_error(resp, 403, 29, "not permitted")
    assert_error(api.get(audiences_url(emu, STRANGER_ACCOUNT)), 403, 29)
    assert emu.state()["lists"] == []


def test_under_review_2626_and_disapproved_2625(emu: Emulator, api: requests.Session) -> None:
    emu.configure(under_review=[ACCOUNT], disapproved=[OTHER_ACCOUNT])
    assert_error(api.get(lists_url(emu)), 403, 2626, "reviewing your account")
    assert_error(api.get(audiences_url(emu)), 403, 2626)
    assert_error(api.post(lists_url(emu), json={"name": "x", "records": h(1)}), 403, 2626)
    assert_error(api.get(lists_url(emu, OTHER_ACCOUNT)), 403, 2625)
    resp = api.post(lists_url(emu, OTHER_ACCOUNT), json={"name": "x", "records": h(1)})
    assert_error(resp, 403, 2625)
    assert emu.state()["lists"] == []
    emu.configure(under_review=[], disapproved=[])
    assert api.get(lists_url(emu)).status_code == 200
    with pytest.raises(ValueError, match="not a configured ad account"):
        emu.configure(under_review=[STRANGER_ACCOUNT])


def test_scopes_are_enforced_per_method(emu: Emulator) -> None:
    code = authorize(emu, scope="ads:read")["code"]
    grant = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    answer = token_request(emu, grant).json()
    assert answer["scope"] == "ads:read"
    headers = {"Authorization": f"Bearer {answer['access_token']}"}
    assert requests.get(lists_url(emu), headers=headers, timeout=TIMEOUT).status_code == 200
    resp = requests.post(
        lists_url(emu), json={"name": "x", "records": h(1)}, headers=headers, timeout=TIMEOUT
    )
    assert_error(resp, 401, 3, "ads:write")
    assert emu.state()["lists"] == []


def test_access_token_ttl_requests_expires_tokens(emu: Emulator, api: requests.Session) -> None:
    emu.configure(access_token_ttl_requests=2)
    assert api.get(lists_url(emu)).status_code == 200
    assert api.get(lists_url(emu)).status_code == 200
    assert_error(api.get(lists_url(emu)), 401, 2, "Authentication failed.")
    answer = token_request(emu, {"grant_type": "refresh_token", "refresh_token": REFRESH}).json()
    fresh = {"Authorization": f"Bearer {answer['access_token']}"}
    for _ in range(2):
        assert requests.get(lists_url(emu), headers=fresh, timeout=TIMEOUT).status_code == 200
    assert requests.get(lists_url(emu), headers=fresh, timeout=TIMEOUT).status_code == 401


# ---------------------------------------------------------------------------------------------
# OAuth
# ---------------------------------------------------------------------------------------------


def test_authorize_redirect_and_single_use_code_exchange(emu: Emulator) -> None:
    query = authorize(emu, state="xyz 1/2&=")
    assert query["state"] == "xyz 1/2&="
    assert "state" not in authorize(emu)
    grant = {
        "grant_type": "authorization_code",
        "code": query["code"],
        "redirect_uri": REDIRECT,
        "continuous_refresh": "true",
    }
    resp = token_request(emu, grant)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["access_token"].startswith("pina_")
    assert answer["refresh_token"].startswith("pinr_")
    assert answer["token_type"] == "bearer"
    assert answer["response_type"] == "authorization_code"
    assert answer["scope"] == "ads:read,ads:write"
    assert answer["expires_in"] == 2592000
    assert answer["refresh_token_expires_in"] == 60 * 24 * 3600
    assert abs(answer["refresh_token_expires_at"] - (time.time() + 60 * 24 * 3600)) < 60
    headers = {"Authorization": f"Bearer {answer['access_token']}"}
    assert requests.get(lists_url(emu), headers=headers, timeout=TIMEOUT).status_code == 200

    reused = token_request(emu, grant)
    assert_error(reused, 400, 1104)
    assert query["code"] not in reused.text


def test_code_exchange_rejects_wrong_redirect_and_client_auth(emu: Emulator) -> None:
    code = authorize(emu)["code"]
    grant = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    wrong_redirect = dict(grant, redirect_uri="http://localhost:8765/other")
    resp = token_request(emu, wrong_redirect)
    assert_error(resp, 400, 1104, "redirect_uri")
    assert code not in resp.text
    assert_error(token_request(emu, grant, headers=basic(secret="wrong")), 401, 2)
    assert_error(token_request(emu, grant, headers={}), 401, 2)
    form_as_json = requests.post(
        f"{emu.api_url}/oauth/token", json=grant, headers=basic(), timeout=TIMEOUT
    )
    assert_error(form_as_json, 400, 1, "Content-Type")
    assert_error(token_request(emu, dict(grant, client_id=CLIENT_ID)), 400, 1, "client_id")
    # None of the failures above consumed the code.
    assert token_request(emu, grant).status_code == 200
    assert_error(token_request(emu, dict(grant, code="made-up")), 400, 1104)


def test_codes_and_access_tokens_expire_with_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Codes live 10 minutes and tokens expires_in seconds; zero lifetimes prove both checks."""
    monkeypatch.setattr(emulator_oauth, "AUTH_CODE_TTL_S", 0)
    with Emulator(access_token_expires_in=0) as emu:
        assert_error(requests.get(lists_url(emu), headers=BEARER, timeout=TIMEOUT), 401, 2)
        grant = {"grant_type": "authorization_code", "redirect_uri": REDIRECT}
        assert_error(token_request(emu, dict(grant, code=authorize(emu)["code"])), 400, 1104)
        answer = token_request(emu, {"grant_type": "refresh_token", "refresh_token": REFRESH})
        assert answer.json()["expires_in"] == 0
        fresh = {"Authorization": f"Bearer {answer.json()['access_token']}"}
        assert_error(requests.get(lists_url(emu), headers=fresh, timeout=TIMEOUT), 401, 2)


def test_authorize_rejects_unknown_client_and_response_type(emu: Emulator) -> None:
    base = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "response_type": "code"}
    for params, field in [
        (dict(base, client_id="someone-else"), "client_id"),
        (dict(base, response_type="token"), "response_type"),
        ({k: v for k, v in base.items() if k != "redirect_uri"}, "redirect_uri"),
    ]:
        resp = requests.get(
            f"{emu.base_url}/oauth/", params=params, allow_redirects=False, timeout=TIMEOUT
        )
        assert_error(resp, 400, 1, field)


def test_refresh_rotates_and_single_use_invalidates(emu: Emulator) -> None:
    first = token_request(emu, {"grant_type": "refresh_token", "refresh_token": REFRESH})
    assert first.status_code == 200, first.text
    first_answer = first.json()
    assert first_answer["response_type"] == "refresh_token"
    assert first_answer["refresh_token"] not in (REFRESH, "")
    assert first_answer["scope"] == "ads:read,ads:write"
    # By default the old refresh token stays valid.
    again = token_request(emu, {"grant_type": "refresh_token", "refresh_token": REFRESH})
    assert again.status_code == 200
    assert again.json()["refresh_token"] != first_answer["refresh_token"]

    emu.configure(refresh_single_use=True)
    rotated = first_answer["refresh_token"]
    ok = token_request(emu, {"grant_type": "refresh_token", "refresh_token": rotated})
    assert ok.status_code == 200
    reuse = token_request(emu, {"grant_type": "refresh_token", "refresh_token": rotated})
    assert_error(reuse, 400, 1104)
    assert rotated not in reuse.text
    newest = ok.json()["refresh_token"]
    narrowed = token_request(
        emu, {"grant_type": "refresh_token", "refresh_token": newest, "scope": "ads:read"}
    )
    assert narrowed.json()["scope"] == "ads:read"
    headers = {"Authorization": f"Bearer {ok.json()['access_token']}"}
    assert requests.get(lists_url(emu), headers=headers, timeout=TIMEOUT).status_code == 200


# ---------------------------------------------------------------------------------------------
# Audiences
# ---------------------------------------------------------------------------------------------


def test_audience_rule_check_and_live_size(emu: Emulator, api: requests.Session) -> None:
    lst = create_list(api, emu, [h(i) for i in range(3)])
    other = api.post(lists_url(emu, OTHER_ACCOUNT), json={"name": "x", "records": h(1)}).json()
    good: dict[str, Any] = {
        "ad_account_id": ACCOUNT,
        "name": "crm audience",
        "audience_type": "CUSTOMER_LIST",
        "rule": {"customer_list_id": lst["id"]},
        "description": "synced by the target",
    }
    bad_bodies: list[tuple[dict[str, Any], str]] = [
        (dict(good, rule={"customer_list_id": lst["id"], "country": "US"}), "rule"),
        (dict(good, rule={"customer_list_id": int(lst["id"])}), "rule"),
        (dict(good, rule={"customer_list_id": "123"}), "rule"),
        (dict(good, rule={"customer_list_id": other["id"]}), "rule"),
        (dict(good, rule=[lst["id"]]), "rule"),
        (dict(good, audience_type="customer_list"), "audience_type"),
        (dict(good, ad_account_id=OTHER_ACCOUNT), "ad_account_id"),
        (dict(good, size=5), "size"),
        ({k: v for k, v in good.items() if k != "rule"}, "rule"),
    ]
    for bad, field in bad_bodies:
        assert_error(api.post(audiences_url(emu), json=bad), 400, 1, field)
    assert emu.state()["audiences"] == []

    resp = api.post(audiences_url(emu), json=good)
    assert resp.status_code == 200, resp.text
    audience = resp.json()
    assert audience["type"] == "audience"
    assert audience["rule"] == {"customer_list_id": lst["id"]}
    assert (audience["size"], audience["status"]) == (3, "TOO_SMALL")
    assert isinstance(audience["created_timestamp"], int)

    api.patch(
        f"{lists_url(emu)}/{lst['id']}",
        json={"operation_type": "ADD", "records": ",".join(h(i) for i in range(3, 103))},
    )
    got = api.get(f"{audiences_url(emu)}/{audience['id']}").json()
    assert (got["size"], got["status"]) == (103, "READY")
    assert emu.state()["audiences"][0]["size"] == 103


def test_requests_as_pinterests_sdk_sends_them(emu: Emulator, api: requests.Session) -> None:
    """ad_account_id in a CustomerListRequest and in a rule (Pinterest's SDK sends both) are
    accepted when they name the path's account, refused when they name another."""
    body = {"ad_account_id": ACCOUNT, "name": "crm", "records": h(1), "list_type": "EMAIL"}
    lst = create_list(api, emu, [h(1)], ad_account_id=ACCOUNT)
    assert lst["ad_account_id"] == ACCOUNT
    resp = api.post(lists_url(emu), json=dict(body, ad_account_id=OTHER_ACCOUNT))
    assert_error(resp, 400, 1, "ad_account_id")
    audience = {
        "ad_account_id": ACCOUNT,
        "name": "crm audience",
        "audience_type": "CUSTOMER_LIST",
        "rule": {"customer_list_id": lst["id"], "ad_account_id": ACCOUNT},
        "description": "",
    }
    resp = api.post(audiences_url(emu), json=audience)
    assert resp.status_code == 200, resp.text
    assert resp.json()["rule"] == {"customer_list_id": lst["id"], "ad_account_id": ACCOUNT}
    wrong = dict(audience, rule={"customer_list_id": lst["id"], "ad_account_id": OTHER_ACCOUNT})
    assert_error(api.post(audiences_url(emu), json=wrong), 400, 1, "ad_account_id")


def _ready_seed(emu: Emulator, api: requests.Session, n: int = 100) -> dict[str, Any]:
    lst = create_list(api, emu, [h(i) for i in range(n)])
    body = {
        "name": "seed",
        "audience_type": "CUSTOMER_LIST",
        "rule": {"customer_list_id": lst["id"]},
    }
    resp = api.post(audiences_url(emu), json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_actalike_audience_rule_follows_the_spec(emu: Emulator, api: requests.Session) -> None:
    seed = _ready_seed(emu, api)
    assert seed["status"] == "READY"
    other_list = api.post(lists_url(emu, OTHER_ACCOUNT), json={"name": "x", "records": h(1)})
    other_seed = api.post(
        audiences_url(emu, OTHER_ACCOUNT),
        json={
            "name": "s",
            "audience_type": "CUSTOMER_LIST",
            "rule": {"customer_list_id": other_list.json()["id"]},
        },
    ).json()
    rule = {"seed_id": [seed["id"]], "country": "GB", "percentage": 10}
    good: dict[str, Any] = {"name": "look", "audience_type": "ACTALIKE", "rule": rule}
    bad_rules: list[dict[str, Any]] = [
        {k: v for k, v in rule.items() if k != "seed_id"},
        {k: v for k, v in rule.items() if k != "country"},
        {k: v for k, v in rule.items() if k != "percentage"},
        dict(rule, seed_id=[]),
        dict(rule, seed_id=seed["id"]),
        dict(rule, seed_id=["999"]),
        dict(rule, seed_id=[other_seed["id"]]),
        dict(rule, country="FR"),
        dict(rule, country="us"),
        dict(rule, percentage=0),
        dict(rule, percentage=11),
        dict(rule, percentage="5"),
        dict(rule, percentage=True),
        dict(rule, customer_list_id="1"),
        dict(rule, ad_account_id=OTHER_ACCOUNT),
    ]
    for bad in bad_rules:
        assert_error(api.post(audiences_url(emu), json=dict(good, rule=bad)), 400, 1, "rule")
    assert "ACTALIKE" not in [a["audience_type"] for a in emu.state()["audiences"]]

    for country, percentage, size in (("GB", 10, 1_500_000), ("US", 1, 900_000)):
        body = dict(good, rule=dict(rule, country=country, percentage=percentage))
        resp = api.post(audiences_url(emu), json=body)
        assert resp.status_code == 200, resp.text
        made = resp.json()
        assert made["rule"] == body["rule"]
        assert (made["audience_type"], made["status"], made["size"]) == ("ACTALIKE", "READY", size)


def test_actalike_refuses_a_seed_not_ready_and_takes_time(
    emu: Emulator, api: requests.Session
) -> None:
    small = _ready_seed(emu, api, n=99)
    assert small["status"] == "TOO_SMALL"
    body = {
        "name": "look",
        "audience_type": "ACTALIKE",
        "rule": {"seed_id": [small["id"]], "country": "US", "percentage": 5},
    }
    message = assert_error(api.post(audiences_url(emu), json=body), 400, 1, "not ready")
    assert "TOO_SMALL" in message and "100" in message
    emu.configure(match_delay_seconds=3600)
    matching = _ready_seed(emu, api, n=150)
    assert matching["status"] == "INITIALIZING"
    body["rule"]["seed_id"] = [matching["id"]]
    message = assert_error(api.post(audiences_url(emu), json=body), 400, 1, "not ready")
    assert "INITIALIZING" in message
    emu.configure(match_delay_seconds=0)
    assert api.get(f"{audiences_url(emu)}/{matching['id']}").json()["status"] == "READY"
    emu.configure(match_delay_seconds=3600)  # the seed is matched; the actalike not yet made
    resp = api.post(audiences_url(emu), json=body)
    assert resp.status_code == 200, resp.text
    assert (resp.json()["status"], resp.json()["size"]) == ("INITIALIZING", None)
    emu.configure(match_delay_seconds=0)
    got = api.get(f"{audiences_url(emu)}/{resp.json()['id']}").json()
    assert (got["status"], got["size"]) == ("READY", 4_500_000)


def test_audience_update_list_and_remove(emu: Emulator, api: requests.Session) -> None:
    lst = create_list(api, emu, [h(1)])
    body: dict[str, Any] = {
        "name": "a",
        "audience_type": "CUSTOMER_LIST",
        "rule": {"customer_list_id": lst["id"]},
    }
    ids = [
        api.post(audiences_url(emu), json=dict(body, name=f"a{i}")).json()["id"] for i in range(3)
    ]
    target = f"{audiences_url(emu)}/{ids[0]}"
    resp = api.patch(target, json={"name": "renamed", "description": "d"})
    assert resp.status_code == 200, resp.text
    assert (resp.json()["name"], resp.json()["description"]) == ("renamed", "d")
    assert_error(api.patch(target, json={"operation_type": "DELETE"}), 400, 1, "operation_type")
    assert_error(api.patch(target, json={"audience_type": "VISITOR"}), 400, 1, "audience_type")
    assert_error(api.patch(target, json={"rule": {"customer_list_id": "1"}}), 400, 1, "rule")

    page = api.get(audiences_url(emu), params={"page_size": "2", "ownership_type": "OWNED"})
    assert [a["id"] for a in page.json()["items"]] == ids[:2]
    rest = api.get(
        audiences_url(emu), params={"page_size": "2", "bookmark": page.json()["bookmark"]}
    )
    assert [a["id"] for a in rest.json()["items"]] == ids[2:]
    assert rest.json()["bookmark"] is None
    received = api.get(audiences_url(emu), params={"ownership_type": "RECEIVED"}).json()
    assert received == {"items": [], "bookmark": None}
    assert_error(api.get(audiences_url(emu), params={"ownership_type": "ALL"}), 400, 1)

    assert api.patch(target, json={"operation_type": "REMOVE"}).status_code == 200
    assert_error(api.get(target), 404, 404, "not found")
    assert_error(api.get(f"{audiences_url(emu)}/99"), 404, 404)
    assert [a["id"] for a in emu.state()["audiences"]] == ids[1:]


def _audience_for(api: requests.Session, emu: Emulator, list_id: str) -> str:
    body = {"name": "a", "audience_type": "CUSTOMER_LIST", "rule": {"customer_list_id": list_id}}
    resp = api.post(audiences_url(emu), json=body)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def test_matching_delay_size_null_until_matched_then_follows_members(
    emu: Emulator, api: requests.Session
) -> None:
    """Pinterest's semantics: size null and INITIALIZING until matched; then READY from 100
    matched users, else TOO_SMALL; a later upload shows once it is matched in turn."""
    delay = 0.6
    emu.configure(match_delay_seconds=delay)
    lst = create_list(api, emu, [h(i) for i in range(50)])
    audience_url = f"{audiences_url(emu)}/{_audience_for(api, emu, lst['id'])}"
    list_url = f"{lists_url(emu)}/{lst['id']}"

    got = api.get(audience_url).json()
    assert (got["size"], got["status"]) == (None, "INITIALIZING")
    assert api.get(list_url).json()["status"] == "PROCESSING"
    assert emu.state()["audiences"][0]["size"] is None
    time.sleep(delay + 0.2)
    got = api.get(audience_url).json()
    assert (got["size"], got["status"]) == (50, "TOO_SMALL")
    assert api.get(list_url).json()["status"] == "TOO_SMALL"

    # A new upload: the previous matching stands until this one is matched.
    more = ",".join(h(i) for i in range(50, 160))
    assert api.patch(list_url, json={"operation_type": "ADD", "records": more}).status_code == 200
    got = api.get(audience_url).json()
    assert (got["size"], got["status"]) == (50, "TOO_SMALL")
    assert api.get(list_url).json()["status"] == "PROCESSING"
    time.sleep(delay + 0.2)
    got = api.get(audience_url).json()
    assert (got["size"], got["status"]) == (160, "READY")
    assert api.get(list_url).json()["status"] == "READY"
    [state_list] = emu.state(members=False)["lists"]
    assert (state_list["num_members"], state_list["matched_users"]) == (160, 160)

    # Removals are matched too (the counters keep rising: they are not a match count).
    gone = ",".join(h(i) for i in range(100))
    resp = api.patch(list_url, json={"operation_type": "REMOVE", "records": gone})
    assert resp.json()["num_removed_user_records"] == 100
    time.sleep(delay + 0.2)
    got = api.get(audience_url).json()
    assert (got["size"], got["status"]) == (60, "TOO_SMALL")

    # The delay in force when read counts: 0 matches every waiting list now.
    emu.configure(match_delay_seconds=3600)
    more = ",".join(h(i) for i in range(200, 240))
    assert api.patch(list_url, json={"operation_type": "ADD", "records": more}).status_code == 200
    assert api.get(audience_url).json()["size"] == 60
    emu.configure(match_delay_seconds=0)
    got = api.get(audience_url).json()
    assert (got["size"], got["status"]) == (100, "READY")


def test_match_fraction_matches_a_deterministic_share(emu: Emulator, api: requests.Session) -> None:
    emu.configure(match_fraction=0.5)
    records = [h(i) for i in range(400)]
    lst = create_list(api, emu, records)
    audience_id = _audience_for(api, emu, lst["id"])
    got = api.get(f"{audiences_url(emu)}/{audience_id}").json()
    # The documented rule, computed here: an identifier matches when its CRC-32 falls below.
    expected = sum(1 for r in records if zlib.crc32(r.encode()) < 0.5 * 2**32)
    assert 100 < expected < 300
    assert got["size"] == expected
    assert got["status"] == "READY"
    assert emu.state(members=False)["lists"][0]["num_members"] == 400


def test_matching_settings_are_validated(emu: Emulator) -> None:
    for bad in (
        {"match_delay_seconds": -1},
        {"match_delay_seconds": True},
        {"match_delay_seconds": "1"},
        {"match_fraction": 1.5},
        {"match_fraction": -0.1},
        {"match_fraction": None},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            emu.configure(**bad)
    control = f"{emu.base_url}/_emulator/config"
    resp = requests.post(
        control, json={"match_delay_seconds": 2.5, "match_fraction": 0.3}, timeout=TIMEOUT
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["config"]["match_delay_seconds"] == 2.5
    assert resp.json()["config"]["match_fraction"] == 0.3
    assert requests.post(control, json={"match_fraction": 2}, timeout=TIMEOUT).status_code == 400


# ---------------------------------------------------------------------------------------------
# Faults, limits and settings
# ---------------------------------------------------------------------------------------------


def test_status_fault_with_retry_after_and_default_codes(
    emu: Emulator, api: requests.Session
) -> None:
    emu.add_fault(kind="status", status=503, retry_after=7, count=1, path_contains="customer_lists")
    emu.add_fault(kind="status", status=429, methods=["POST"], count=1)
    resp = api.get(lists_url(emu))
    assert_error(resp, 503, 4197)
    assert resp.headers["Retry-After"] == "7"
    assert "x-pinterest-rid" in resp.headers
    resp = api.post(lists_url(emu), json={"name": "x", "records": h(1)})
    assert_error(resp, 429, 8)
    assert "Retry-After" not in resp.headers
    assert emu.state()["lists"] == []  # a status fault never applies the request
    create_list(api, emu, [h(1)])
    statuses = [r["status"] for r in emu.state()["requests"]]
    assert statuses == [503, 429, 200]


def test_fault_matching_skip_every_count_and_order(emu: Emulator, api: requests.Session) -> None:
    emu.add_fault(kind="status", status=500, methods=["get"], skip=1, every=2, count=2)
    emu.add_fault(kind="status", status=502, path_contains="/audiences")
    statuses = [api.get(lists_url(emu)).status_code for _ in range(8)]
    assert statuses == [200, 200, 500, 200, 500, 200, 200, 200]
    # The first rule is spent, so the second decides for audiences.
    assert api.get(audiences_url(emu)).status_code == 502
    assert api.post(lists_url(emu), json={"name": "x", "records": h(1)}).status_code == 200
    faults = emu.state()["faults"]
    assert [(f["seen"], f["fired"]) for f in faults] == [(9, 2), (1, 1)]
    emu.clear_faults()
    assert api.get(audiences_url(emu)).status_code == 200


def test_drop_before_loses_the_request(emu: Emulator, api: requests.Session) -> None:
    emu.add_fault(kind="drop_before", methods=["POST"], count=1)
    with pytest.raises(requests.ConnectionError):
        requests.post(
            lists_url(emu),
            json={"name": "x", "records": h(1)},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=TIMEOUT,
        )
    state = emu.state()
    assert state["lists"] == []
    assert state["requests"][-1]["status"] == "dropped"
    assert state["requests"][-1]["fault"] == "drop_before"
    create_list(api, emu, [h(1)])  # the server still serves afterwards


def test_drop_after_applies_the_change_but_never_answers(
    emu: Emulator, api: requests.Session
) -> None:
    emu.add_fault(kind="drop_after", methods=["POST"], path_contains="customer_lists", count=1)
    with pytest.raises(requests.ConnectionError):
        requests.post(
            lists_url(emu),
            json={"name": "ghost", "records": h(1)},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=TIMEOUT,
        )
    state = emu.state()
    assert [(lst["name"], lst["members"]) for lst in state["lists"]] == [("ghost", [h(1)])]
    assert state["requests"][-1]["status"] == "dropped"
    assert state["requests"][-1]["applied_status"] == 200
    assert [i["name"] for i in api.get(lists_url(emu)).json()["items"]] == ["ghost"]


def test_delay_and_too_large_faults(emu: Emulator, api: requests.Session) -> None:
    emu.add_fault(kind="delay", delay_ms=250, count=1)
    emu.add_fault(kind="too_large", methods=["PATCH"])
    started = time.monotonic()
    assert api.get(lists_url(emu)).status_code == 200
    assert time.monotonic() - started >= 0.25
    lst = create_list(api, emu, [h(1)])
    resp = api.patch(
        f"{lists_url(emu)}/{lst['id']}", json={"operation_type": "ADD", "records": h(2)}
    )
    assert_error(resp, 413, 1, "Request entity too large")
    assert emu.state()["lists"][0]["members"] == [h(1)]


def test_record_cap_rejects_big_writes_with_413(emu: Emulator, api: requests.Session) -> None:
    emu.configure(record_cap=3)
    resp = api.post(lists_url(emu), json={"name": "x", "records": ",".join(map(h, range(4)))})
    assert_error(resp, 413, 1)
    assert emu.state()["lists"] == []
    lst = create_list(api, emu, [h(i) for i in range(3)])
    four = ",".join(h(i) for i in range(10, 14))
    resp = api.patch(
        f"{lists_url(emu)}/{lst['id']}", json={"operation_type": "ADD", "records": four}
    )
    assert_error(resp, 413, 1)
    assert len(emu.state()["lists"][0]["members"]) == 3


def test_write_delay_keeps_requests_concurrent(emu: Emulator) -> None:
    emu.configure(write_delay_ms=300)
    statuses: list[int] = []

    def write(i: int) -> None:
        resp = requests.post(
            lists_url(emu),
            json={"name": f"l{i}", "records": h(i)},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=TIMEOUT,
        )
        statuses.append(resp.status_code)

    started = time.monotonic()
    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert statuses == [200] * 4
    assert 0.3 <= elapsed < 1.0  # delayed, but not one after another
    started = time.monotonic()
    requests.get(lists_url(emu), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT)
    assert time.monotonic() - started < 0.25  # reads are not delayed


def test_server_side_write_limit_answers_429_without_retry_after(
    emu: Emulator, api: requests.Session
) -> None:
    emu.configure(writes_per_minute_limit=2)
    create_list(api, emu, [h(1)])
    create_list(api, emu, [h(2)])
    resp = api.post(lists_url(emu), json={"name": "x", "records": h(3)})
    assert_error(resp, 429, 8)
    assert "Retry-After" not in resp.headers
    assert api.get(lists_url(emu)).status_code == 200  # reads are not writes
    assert len(emu.state()["lists"]) == 2


def test_concurrent_writes_are_all_applied(emu: Emulator) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    lst = create_list(session, emu, [h("seed")])
    url = f"{lists_url(emu)}/{lst['id']}"

    def add(worker: int) -> None:
        with requests.Session() as s:
            s.headers["Authorization"] = f"Bearer {TOKEN}"
            for batch in range(5):
                records = ",".join(h(f"{worker}-{batch}-{i}") for i in range(20))
                assert s.patch(url, json={"operation_type": "ADD", "records": records}).ok

    threads = [threading.Thread(target=add, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    got = session.get(url).json()
    assert (got["num_batches"], got["num_uploaded_user_records"]) == (31, 601)
    assert emu.state(members=False)["lists"][0]["num_members"] == 601


def test_max_events_in_window_on_synthetic_times() -> None:
    assert max_events_in_window([]) == 0
    assert max_events_in_window([5.0]) == 1
    assert max_events_in_window([0.0, 59.999, 60.0]) == 2  # 60 s apart: not one window
    assert max_events_in_window([100, 0, 30, 59, 200, 61, 62]) == 4  # 30, 59, 61, 62
    assert max_events_in_window([0, 1, 2, 3], window=2) == 2
    assert max_events_in_window([7.0] * 5) == 5
    even = [i * 0.5 for i in range(1000)]  # 2 per second: 120 in any 60 s window
    assert max_events_in_window(even) == 120
    rng = random.Random(7)
    for _ in range(20):
        times = [rng.uniform(0, 300) for _ in range(rng.randint(0, 60))]
        brute = max((sum(1 for u in times if t <= u < t + 60) for t in times), default=0)
        assert max_events_in_window(times) == brute


def test_max_writes_in_any_60s_counts_writes_of_any_status(
    emu: Emulator, api: requests.Session
) -> None:
    create_list(api, emu, [h(1)])
    api.post(lists_url(emu), json={"name": "x", "records": "bad"})  # a 400 is still a write
    api.post(lists_url(emu), json={"name": "x", "records": h(2)}, headers={"Authorization": ""})
    for _ in range(3):
        api.get(lists_url(emu))
    token_request(emu, {"grant_type": "refresh_token", "refresh_token": REFRESH})
    assert emu.state()["max_writes_in_any_60s"] == 3


# ---------------------------------------------------------------------------------------------
# Control API, reset, CLI
# ---------------------------------------------------------------------------------------------


def test_control_api_is_unlogged_and_validates(emu: Emulator, api: requests.Session) -> None:
    control = f"{emu.base_url}/_emulator"
    rules: list[Any] = [
        {"kind": "status", "status": 500, "count": 1},
        {"kind": "delay", "delay_ms": 1},
    ]
    resp = requests.post(f"{control}/faults", json=rules, timeout=TIMEOUT)
    assert resp.status_code == 200
    assert [f["kind"] for f in resp.json()["faults"]] == ["status", "delay"]
    bad = requests.post(f"{control}/faults", json={"kind": "explode"}, timeout=TIMEOUT)
    assert bad.status_code == 400
    with pytest.raises(ValueError, match="status"):
        emu.add_fault(kind="status")
    assert requests.delete(f"{control}/faults", timeout=TIMEOUT).json() == {"faults": []}
    config = requests.post(f"{control}/config", json={"record_cap": 5}, timeout=TIMEOUT)
    assert config.json()["config"]["record_cap"] == 5
    assert requests.post(f"{control}/config", json={"bogus": 1}, timeout=TIMEOUT).status_code == 400

    create_list(api, emu, [h(1), h(2)])
    full = requests.get(f"{control}/state", timeout=TIMEOUT).json()
    assert full["lists"][0]["members"] == sorted([h(1), h(2)])
    assert [r["path"] for r in full["requests"]] == [f"/v5/ad_accounts/{ACCOUNT}/customer_lists"]
    slim = requests.get(f"{control}/state?members=0&requests=0", timeout=TIMEOUT).json()
    assert "members" not in slim["lists"][0]
    assert slim["lists"][0]["num_members"] == 2
    assert "requests" not in slim
    assert slim["max_writes_in_any_60s"] == 1

    assert requests.post(f"{control}/reset", timeout=TIMEOUT).status_code == 200
    after = emu.state()
    assert (after["lists"], after["requests"], after["faults"]) == ([], [], [])
    assert after["config"]["record_cap"] == 5  # settings survive a reset
    assert api.get(lists_url(emu)).status_code == 200  # the seeded token survives too


def test_reset_restores_a_consumed_seeded_refresh_token(emu: Emulator) -> None:
    emu.configure(refresh_single_use=True)
    grant = {"grant_type": "refresh_token", "refresh_token": REFRESH}
    assert token_request(emu, grant).status_code == 200
    assert token_request(emu, grant).status_code == 400
    emu.reset(config=True)
    assert token_request(emu, grant).status_code == 200
    assert token_request(emu, grant).status_code == 200  # config reset: reusable again


def test_cli_prints_listening_line_serves_and_exits_on_sigterm(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["EMULATOR_ACCESS_TOKEN"] = "env-token"
    env["EMULATOR_CLIENT_ID"] = "env-client"
    cmd = [sys.executable, "-m", "target_pinterest_audiences.emulator", "--port", "0"]
    cmd += ["--client-id", "flag-client", "--state-file", str(state_file)]
    cmd += ["--match-delay-seconds", "3600"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "emulator did not print its listening line"
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        base = line.split()[-1]
        port = int(base.rsplit(":", 1)[1])
        assert port > 0

        headers = {"Authorization": "Bearer env-token"}  # the env var seeded this token
        url = f"{base}/v5/ad_accounts/{ACCOUNT}/customer_lists"
        resp = requests.post(url, json={"name": "cli", "records": h(1)}, headers=headers, timeout=5)
        assert resp.status_code == 200, resp.text
        audience = requests.post(
            url.replace("customer_lists", "audiences"),
            json={
                "name": "cli",
                "audience_type": "CUSTOMER_LIST",
                "rule": {"customer_list_id": resp.json()["id"]},
            },
            headers=headers,
            timeout=5,
        )
        assert audience.status_code == 200, audience.text
        assert (audience.json()["size"], audience.json()["status"]) == (None, "INITIALIZING")
        other = {"Authorization": f"Bearer {TOKEN}"}
        assert requests.get(url, headers=other, timeout=5).status_code == 401
        params = {"redirect_uri": REDIRECT, "response_type": "code"}
        for client, status in (("flag-client", 302), ("env-client", 400)):  # flags win
            got = requests.get(
                f"{base}/oauth/",
                params=dict(params, client_id=client),
                allow_redirects=False,
                timeout=5,
            )
            assert got.status_code == status

        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == ""  # quiet: nothing after the listening line
    saved = json.loads(state_file.read_text())
    assert [lst["name"] for lst in saved["lists"]] == ["cli"]
    assert saved["lists"][0]["members"] == [h(1)]
