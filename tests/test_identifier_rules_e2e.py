"""Identifiers that can never match, through the installed CLI against the emulator: skipped
and counted under their own reasons, never uploaded, never echoed."""

from __future__ import annotations

from conftest import email_hash, lists_named, records, sha

ZEROED = "00000000-0000-0000-0000-000000000000"


def test_never_matching_identifiers_are_skipped_by_reason_and_never_echoed(
    emulator, base_config, run_target
):
    rows = [
        {"segment_name": "S", "action": "add", "email": "ok@example.com"},
        {"segment_name": "S", "action": "add", "maid": ZEROED},
        {"segment_name": "S", "action": "add", "idfa": " " + ZEROED},
        {"segment_name": "S", "action": "add", "maid_sha256": sha(ZEROED)},
        {"segment_name": "S", "action": "add", "idfa_sha256": sha("")},
        {"segment_name": "S", "action": "add", "email_sha256": sha("null").upper()},
        {"segment_name": "S", "action": "add", "email": "mailto:secret.person@example.com"},
        {"segment_name": "S", "action": "add", "email": "<hidden.one@example.com>"},
        {"segment_name": "S", "action": "add", "email": "nul\x00byte@example.com"},
        {"segment_name": "S", "action": "add", "email": "longlocal" * 8 + "@example.com"},
        {"segment_name": "S", "action": "add", "email": "user@" + "longlabel" * 8 + ".com"},
        {"segment_name": "S", "action": "add", "email": " Jöhn.Doe@Exämple.de "},  # IDN: valid
    ]
    run = run_target({**base_config, "on_invalid_record": "skip"}, records(rows))
    assert run.returncode == 0, run.stderr

    report = run.final
    assert report["records_skipped"] == {
        "zeroed_device_id": 3,
        "hash_of_empty_value": 2,
        "invalid_email": 5,
    }
    assert report["records_received"] == 12 and report["identifiers_added"] == 2
    (created,) = lists_named(emulator, "S")
    assert set(created["members"]) == {
        email_hash("ok@example.com"),
        email_hash("jöhn.doe@exämple.de"),
    }

    # each skip names its record and the rule, never the value
    for rule in (
        "Skipping record 2 (stream 'customers'): field 'maid': is the all-zero advertising id",
        "field 'maid_sha256': is the SHA-256 of the all-zero advertising id",
        "field 'idfa_sha256': is the SHA-256 of the empty string",
        "field 'email_sha256': is the SHA-256 of the string 'null'",
        "Skipping record 7 (stream 'customers'): field 'email': is not a valid email address: "
        "its local part holds a character outside RFC 5322 atext",
        "it holds a control character",
        "its local part is longer than 64 octets",
        "a domain label is longer than 63 octets",
    ):
        assert rule in run.stderr, rule
    for raw in (
        ZEROED,
        sha(ZEROED),
        sha(""),
        sha("null"),
        sha("null").upper(),
        "secret.person",
        "hidden.one",
        "byte@example",
        "longlocal",
        "longlabel",
        "ok@example.com",
        "exämple",
    ):
        assert raw not in run.stderr, raw
        assert raw not in run.stdout, raw
