"""Custom external ids (LR_ID, DLX_ID, HASHED_PINNER_ID) end to end: the installed CLI over
HTTP against the emulator.

A run of external ids creates its list with external_id_type as list_type and sends the ids
as given (trimmed; a hashed pinner id lowercased), never hashed again; invalid ids follow
on_invalid_record under their own reasons and are never echoed; a run never mixes external
ids with emails, MAIDs or IDFAs; and a list whose kind is known stops a run of another kind
before any write. The emulator checks records against each list's own list_type.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import requests
from conftest import ACCESS_TOKEN, AD_ACCOUNT, email_hash, lists_named, records
from test_mirror import snapshot_database  # noqa: F401 (a fixture: the PostgreSQL store)

SEGMENT = "Partner segment"

#: Values as a source holds them (padded; hex digests in upper case) -> what is sent.
LR_IDS = {
    f"  XYsentinelLR{i:03d}Rq7Kqy5hLjsBJyB0HcSdoBq ": f"XYsentinelLR{i:03d}Rq7Kqy5hLjsBJyB0HcSdoBq"
    for i in range(12)
}
DLX_IDS = {f"\tDLXsentinel-{i:03d}_Ab+/= ": f"DLXsentinel-{i:03d}_Ab+/=" for i in range(12)}


def _pinner_digest(i: int) -> str:
    algorithm = ("sha256", "sha1", "md5")[i % 3]
    return getattr(hashlib, algorithm)(f"pinner-sentinel-{i}".encode()).hexdigest()


PINNER_IDS = {f" {_pinner_digest(i).upper()} ": _pinner_digest(i) for i in range(12)}
VALUES = {"LR_ID": LR_IDS, "DLX_ID": DLX_IDS, "HASHED_PINNER_ID": PINNER_IDS}


def rows(values: list[str], action: str = "add", segment: str = SEGMENT) -> list[dict[str, Any]]:
    return [{"segment_name": segment, "action": action, "external_id": v} for v in values]


def the_list(emulator, name: str = SEGMENT) -> dict[str, Any]:
    (found,) = lists_named(emulator, name)
    return found


def write_requests(emulator) -> list[dict[str, Any]]:
    return [
        r for r in emulator.state(members=False)["requests"] if r["method"] in ("POST", "PATCH")
    ]


def assert_never_echoed(text: str, values: list[str]) -> None:
    for value in values:
        for form in {value.strip(), value.strip().lower()}:
            if form:
                assert form not in text, form
    assert "Traceback" not in text


@pytest.mark.parametrize("id_type", ["LR_ID", "DLX_ID", "HASHED_PINNER_ID"])
def test_each_external_id_type_end_to_end(emulator, base_config, run_target, id_type):
    raw = list(VALUES[id_type])
    sent = VALUES[id_type]
    config = {**base_config, "external_id_type": id_type, "identifiers_per_request": 5}

    first = run_target(config, records(rows(raw[:10])))
    assert first.returncode == 0, first.stderr
    created = the_list(emulator)
    assert created["list_type"] == id_type
    assert set(created["members"]) == {sent[v] for v in raw[:10]}
    assert first.final["list_created"] and first.final["identifiers_added"] == 10

    # The next run adopts the list by name: removes three, adds the last two.
    second = run_target(config, records(rows(raw[:3], "remove") + rows(raw[10:])))
    assert second.returncode == 0, second.stderr
    assert len(lists_named(emulator, SEGMENT)) == 1
    assert set(the_list(emulator)["members"]) == {sent[v] for v in raw[3:]}
    assert second.final["identifiers_removed"] == 3 and second.final["identifiers_added"] == 2
    assert_never_echoed(first.stderr + second.stderr + first.stdout + second.stdout, raw)


INVALID_LR_ROWS = [
    ("XYgoodLR0001", None),
    ("XYbadLR 0002", "invalid_external_id"),  # whitespace inside
    ("XYbadLR,0003", "invalid_external_id"),  # a comma would split it in two
    ("XYbadLR" + "Z" * 250, "invalid_external_id"),  # 257 characters
    ("XYbadLR\x070005", "invalid_external_id"),  # control character
    ("\ufeffXYbadLR0006", "invalid_external_id"),  # byte order mark
    ("XYbadLR\u200b0007", "invalid_external_id"),  # zero-width space
    ("NULL", "placeholder_value"),
    ("   ", "no_identifier"),
    ("XYgoodLR0010", None),
    ("Z" * 256, None),  # exactly 256 characters: valid
]


def test_invalid_external_ids_are_skipped_by_reason_and_never_echoed(
    emulator, base_config, run_target
):
    config = {**base_config, "external_id_type": "LR_ID", "on_invalid_record": "skip"}
    run = run_target(config, records(rows([value for value, _ in INVALID_LR_ROWS])))
    assert run.returncode == 0, run.stderr
    assert run.final["records_skipped"] == {
        "invalid_external_id": 6,
        "placeholder_value": 1,
        "no_identifier": 1,
    }
    assert set(the_list(emulator)["members"]) == {
        value for value, reason in INVALID_LR_ROWS if reason is None
    }
    for rule in (
        "Skipping record 2 (stream 'customers'): field 'external_id': is not a valid LR_ID: "
        "it holds whitespace",
        "record 3 (stream 'customers'): field 'external_id': is not a valid LR_ID: it holds a "
        "comma",
        "it is longer than 256 characters",
        "it holds a control character",
        "it holds an invisible formatting character",
        "it is a placeholder",
    ):
        assert rule in run.stderr, rule
    assert "XYbadLR" not in run.stderr and "XYgoodLR" not in run.stderr
    assert "Z" * 20 not in run.stderr


def test_invalid_hashed_pinner_ids_are_skipped_by_reason(emulator, base_config, run_target):
    good = _pinner_digest(1)
    values = [
        good.upper(),
        good[:-1],  # 39 hex characters
        "g" * 64,  # not hex
        hashlib.sha1(b"", usedforsecurity=False).hexdigest(),  # SHA-1 of the empty string
        hashlib.md5(b"null", usedforsecurity=False).hexdigest().upper(),  # MD5 of 'null'
    ]
    config = {**base_config, "external_id_type": "HASHED_PINNER_ID", "on_invalid_record": "skip"}
    run = run_target(config, records(rows(values)))
    assert run.returncode == 0, run.stderr
    assert run.final["records_skipped"] == {"invalid_external_id": 2, "hash_of_empty_value": 2}
    assert the_list(emulator)["members"] == [good]
    assert "it is the SHA-1 of the empty string" in run.stderr
    assert "it is the MD5 of the string 'null'" in run.stderr
    assert_never_echoed(run.stderr, [good, good[:-1], "g" * 64])


def test_an_invalid_external_id_fails_the_run_by_default_naming_it(
    emulator, base_config, run_target
):
    config = {**base_config, "external_id_type": "DLX_ID"}
    run = run_target(config, records(rows(["DLXfine001", "DLXbroken 002", "DLXfine003"])))
    assert run.returncode != 0
    assert (
        "record 2 (stream 'customers') is invalid: field 'external_id': is not a valid DLX_ID: "
        "it holds whitespace" in run.stderr
    )
    assert write_requests(emulator) == []  # nothing of the batch holding it was written
    assert_never_echoed(run.stderr, ["DLXfine001", "DLXbroken 002", "DLXbroken"])


def test_external_id_without_external_id_type_is_invalid_and_says_to_set_it(
    emulator, base_config, run_target
):
    messages = records(
        [
            {"segment_name": SEGMENT, "action": "add", "email": "someone@example.com"},
            {"segment_name": SEGMENT, "action": "add", "external_id": "XYnoTypeLR0001"},
        ]
    )
    skip = run_target({**base_config, "on_invalid_record": "skip"}, messages)
    assert skip.returncode == 0, skip.stderr
    assert skip.final["records_skipped"] == {"external_id_type_not_set": 1}
    assert the_list(emulator)["members"] == [email_hash("someone@example.com")]
    assert "needs the setting external_id_type" in skip.stderr

    fail = run_target(base_config, messages)
    assert fail.returncode != 0
    assert "record 2 (stream 'customers') is invalid: field 'external_id': needs the setting" in (
        fail.stderr
    )
    assert_never_echoed(skip.stderr + fail.stderr, ["XYnoTypeLR0001", "someone@example.com"])


def test_mixing_external_ids_with_other_identifiers_is_refused(emulator, base_config, run_target):
    config = {**base_config, "external_id_type": "LR_ID", "on_invalid_record": "skip"}
    messages = records(
        [
            {"segment_name": SEGMENT, "action": "add", "external_id": "XYmixLR0001"},
            {"segment_name": SEGMENT, "action": "add", "email": "mixer@example.com"},  # mixes
            {"segment_name": SEGMENT, "action": "add", "external_id": "XYmixLR0003"},
            {  # one record with both kinds
                "segment_name": SEGMENT,
                "action": "add",
                "external_id": "XYmixLR0004",
                "maid": "6D92078A-8246-4BA4-AE5B-76104861E7DC",
            },
            {"segment_name": SEGMENT, "action": "add", "idfa_sha256": email_hash("x")},  # mixes
        ]
    )
    run = run_target(config, messages)
    assert run.returncode == 0, run.stderr
    assert run.final["records_skipped"] == {"mixed_identifier_kinds": 3}
    created = the_list(emulator)
    assert created["list_type"] == "LR_ID"
    assert set(created["members"]) == {"XYmixLR0001", "XYmixLR0003"}
    assert (
        "Skipping record 2 (stream 'customers'): field 'email': holds an email, MAID or IDFA "
        "identifier, but this run sends LR_ID external ids (since record 1)" in run.stderr
    )
    assert "field 'external_id': is present together with an email, MAID or IDFA" in run.stderr
    assert "field 'idfa_sha256': holds an email, MAID or IDFA identifier" in run.stderr
    assert_never_echoed(run.stderr, ["XYmixLR", "mixer@example.com", "6d92078a"])


def test_a_run_that_began_with_emails_refuses_external_ids(emulator, base_config, run_target):
    config = {**base_config, "external_id_type": "DLX_ID"}
    messages = records(
        [
            {"segment_name": SEGMENT, "action": "add", "email": "first@example.com"},
            {"segment_name": SEGMENT, "action": "add", "external_id": "DLXlate0002"},
        ]
    )
    skip = run_target({**config, "on_invalid_record": "skip"}, messages)
    assert skip.returncode == 0, skip.stderr
    assert skip.final["records_skipped"] == {"mixed_identifier_kinds": 1}
    created = the_list(emulator)
    assert created["list_type"] == "EMAIL"
    assert created["members"] == [email_hash("first@example.com")]
    assert (
        "field 'external_id': holds an external id, but this run sends email, MAID or IDFA "
        "identifiers (since record 1)" in skip.stderr
    )

    fail = run_target({**config, "audience_name": "Other"}, messages)
    assert fail.returncode != 0
    assert (
        "record 2 (stream 'customers') is invalid: field 'external_id': holds an external id"
        in (fail.stderr)
    )
    assert_never_echoed(skip.stderr + fail.stderr, ["DLXlate0002", "first@example.com"])


def test_a_run_of_another_kind_than_a_known_list_stops_before_any_write(
    emulator, base_config, run_target
):
    # The target created this list of emails, so its snapshot knows it is an EMAIL list.
    emails = run_target(
        base_config,
        records([{"segment_name": SEGMENT, "action": "add", "email": "known@example.com"}]),
    )
    assert emails.returncode == 0, emails.stderr
    list_id = the_list(emulator)["id"]
    before = len(write_requests(emulator))

    # Another audience name: adopting the list would go on to create an audience (a write).
    config = {**base_config, "external_id_type": "LR_ID", "audience_name": "Partner audience"}
    lr_run = run_target(config, records(rows(["XYkindLR0001", "XYkindLR0002"])))
    assert lr_run.returncode != 0
    assert (
        f"Customer List {list_id} holds email, MAID or IDFA identifiers (list_type EMAIL)"
        in lr_run.stderr
    )
    assert "but this run sends LR_ID external ids (list_type LR_ID)" in lr_run.stderr
    assert "Nothing was written" in lr_run.stderr
    assert write_requests(emulator)[before:] == []
    assert the_list(emulator)["members"] == [email_hash("known@example.com")]
    assert len(emulator.state()["audiences"]) == 1
    assert_never_echoed(lr_run.stderr, ["XYkindLR", "known@example.com"])


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_kinds_of_lists_made_elsewhere_are_recorded_by_the_first_external_run(
    emulator, base_config, run_target, store, request
):
    """Pinterest does not say a list's kind: a list made elsewhere takes the kind of the first
    external-id run that writes to it, and a later run of another kind stops."""
    if store == "postgres":
        url, _ = request.getfixturevalue("snapshot_database")
        base_config = {**base_config, "snapshot_url": url}
    made = requests.post(
        f"{emulator.api_url}/ad_accounts/{AD_ACCOUNT}/customer_lists",
        json={"name": SEGMENT, "records": "XYelsewhere0000", "list_type": "HASHED_PINNER_ID"},
        headers={"Authorization": f"Bearer {ACCESS_TOKEN}"},
        timeout=5,
    )
    # The emulator holds the list to its own kind: that id is no hashed pinner id.
    assert made.status_code == 400
    assert "is not a lowercase hex SHA-256, SHA-1 or MD5 digest" in made.json()["message"]
    made = requests.post(
        f"{emulator.api_url}/ad_accounts/{AD_ACCOUNT}/customer_lists",
        json={"name": SEGMENT, "records": "XYelsewhere0000", "list_type": "LR_ID"},
        headers={"Authorization": f"Bearer {ACCESS_TOKEN}"},
        timeout=5,
    )
    assert made.status_code == 200, made.text
    list_id = made.json()["id"]

    config = {**base_config, "external_id_type": "LR_ID", "sync_mode": "mirror"}
    ids = [f"XYelsewhere{i:04d}" for i in range(1, 11)]
    first = run_target(config, records(rows(ids)))
    assert first.returncode == 0, first.stderr
    assert not first.final["list_created"] and first.final["segment_id"] == list_id
    assert f"Customer List {list_id} has no known kind (it was made elsewhere" in first.stderr
    assert "this run's kind, LR_ID, is recorded for it" in first.stderr
    # "XYelsewhere0000" was added elsewhere: outside the snapshot, never removed by it.
    assert set(the_list(emulator)["members"]) == {"XYelsewhere0000", *ids}
    # The recorded kind keeps the keys as text: the next mirror run writes only the difference.
    before = len(write_requests(emulator))
    second = run_target(config, records(rows([*ids[1:], "XYelsewhere0011"])))
    assert second.returncode == 0, second.stderr
    assert [(r["operation_type"], r["n_records"]) for r in write_requests(emulator)[before:]] == [
        ("ADD", 1),
        ("REMOVE", 1),
    ]
    assert set(the_list(emulator)["members"]) == {
        "XYelsewhere0000",
        *ids[1:],
        "XYelsewhere0011",
    }

    before = len(write_requests(emulator))
    emails = run_target(
        {**base_config, "on_invalid_record": "skip"},
        records([{"segment_name": SEGMENT, "action": "add", "email": "late@example.com"}]),
    )
    assert emails.returncode != 0
    assert f"Customer List {list_id} holds LR_ID external ids (list_type LR_ID)" in emails.stderr
    assert "but this run sends email, MAID or IDFA identifiers (list_type EMAIL)" in emails.stderr
    assert write_requests(emulator)[before:] == []


def test_mirror_mode_with_lr_ids_writes_only_the_difference(emulator, base_config, run_target):
    config = {
        **base_config,
        "external_id_type": "LR_ID",
        "sync_mode": "mirror",
        "identifiers_per_request": 10_000,
    }
    ids = [f"XYmirrorLR{i:05d}Kq7" for i in range(220)]
    member_rows = [{"segment_name": SEGMENT, "external_id": f" {v} "} for v in ids]
    first = run_target(config, records(member_rows[:200]))
    assert first.returncode == 0, first.stderr
    created = the_list(emulator)
    assert created["list_type"] == "LR_ID"
    assert set(created["members"]) == set(ids[:200])
    assert first.final["snapshot"] == "new" and first.final["identifiers_added"] == 200

    # 10 left, 10 are new: exactly those 20 ids are written, in one ADD and one REMOVE.
    before = len(write_requests(emulator))
    second = run_target(config, records(member_rows[10:210]))
    assert second.returncode == 0, second.stderr
    assert set(the_list(emulator)["members"]) == set(ids[10:210])
    assert sorted(
        (r["operation_type"], r["n_records"]) for r in write_requests(emulator)[before:]
    ) == [("ADD", 10), ("REMOVE", 10)]
    report = second.final
    assert report["snapshot"] == "existing" and report["unchanged"] == 190
    assert report["identifiers_added"] == 10 and report["identifiers_removed"] == 10

    before = len(write_requests(emulator))
    third = run_target(config, records(member_rows[10:210]))
    assert third.returncode == 0, third.stderr
    assert write_requests(emulator)[before:] == []
    assert_never_echoed(first.stderr + second.stderr + third.stderr, ["XYmirrorLR"])


def test_mirror_skipped_external_ids_count_as_seen(emulator, base_config, run_target):
    """A skipped record's well-formed external id is neither added nor removed by it."""
    config = {
        **base_config,
        "external_id_type": "LR_ID",
        "sync_mode": "mirror",
        "on_invalid_record": "skip",
    }
    ids = [f"XYseenLR{i:03d}" for i in range(20)]
    first = run_target(config, records([{"segment_name": SEGMENT, "external_id": v} for v in ids]))
    assert first.returncode == 0, first.stderr
    # ids[0] now comes in a record with a bad action (skipped): it stays a member.
    messages = records(
        [{"segment_name": SEGMENT, "action": "explode", "external_id": ids[0]}]
        + [{"segment_name": SEGMENT, "external_id": v} for v in ids[1:]]
    )
    second = run_target(config, messages)
    assert second.returncode == 0, second.stderr
    assert second.final["records_skipped"] == {"unknown_action": 1}
    assert set(the_list(emulator)["members"]) == set(ids)
    assert second.final["identifiers_removed"] == 0


# ---- the emulator: records are checked against the list's own list_type -----------------


def _post_list(emulator, records_: str, list_type: str) -> requests.Response:
    return requests.post(
        f"{emulator.api_url}/ad_accounts/{AD_ACCOUNT}/customer_lists",
        json={"name": f"n-{list_type}", "records": records_, "list_type": list_type},
        headers={"Authorization": f"Bearer {ACCESS_TOKEN}"},
        timeout=5,
    )


def _patch_list(emulator, list_id: str, records_: str) -> requests.Response:
    return requests.patch(
        f"{emulator.api_url}/ad_accounts/{AD_ACCOUNT}/customer_lists/{list_id}",
        json={"operation_type": "ADD", "records": records_},
        headers={"Authorization": f"Bearer {ACCESS_TOKEN}"},
        timeout=5,
    )


SHA256 = email_hash("a@example.com")
SHA1 = hashlib.sha1(b"pinner", usedforsecurity=False).hexdigest()
MD5 = hashlib.md5(b"pinner", usedforsecurity=False).hexdigest()


@pytest.mark.parametrize(
    ("list_type", "accepted", "refused"),
    [
        ("EMAIL", [SHA256], [SHA1, MD5, SHA256.upper(), "XYpartner01", "a@example.com"]),
        ("MAID", [SHA256], [SHA1, "6d92078a-8246-4ba4-ae5b-76104861e7dc"]),
        ("IDFA", [SHA256], [MD5]),
        ("HASHED_PINNER_ID", [SHA256, SHA1, MD5], [SHA256.upper(), SHA1[:-1], "XYpartner01"]),
        (
            "LR_ID",
            ["XYpartner01", SHA256, "Z" * 256, "ÄÖÜ-ünïcödé"],
            ["XY partner", "XY\tpartner", "XY\x01partner", "Z" * 257, "", "XY\u2028p"],
        ),
        ("DLX_ID", ["DLX-00001_ab+/="], ["DLX 00001", "Z" * 257]),
    ],
)
def test_emulator_checks_records_against_the_list_type(emulator, list_type, accepted, refused):
    created = _post_list(emulator, ",".join(accepted), list_type)
    assert created.status_code == 200, created.text
    list_id = created.json()["id"]
    assert _patch_list(emulator, list_id, ",".join(accepted)).status_code == 200
    for bad in refused:
        for records_ in (f"{accepted[0]},{bad}",):
            for response in (
                _post_list(emulator, records_, list_type),
                _patch_list(emulator, list_id, records_),
            ):
                assert response.status_code == 400, (bad, response.text)
                message = response.json()["message"]
                assert "entry at index 1 is not" in message and list_type in message
                if bad.strip():
                    assert bad not in message
    (listed,) = [item for item in emulator.state()["lists"] if item["id"] == list_id]
    assert listed["list_type"] == list_type
    assert set(listed["members"]) == set(accepted)
