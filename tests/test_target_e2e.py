"""The core target end to end: the installed CLI against the emulator over HTTP."""

from __future__ import annotations

import json

from conftest import (
    ACCESS_TOKEN,
    AD_ACCOUNT,
    MAID_HASH_OF,
    SCHEMA,
    email_hash,
    lists_named,
    members,
    record,
    records,
    sha,
    state,
    writes,
)

MAID = "6D92078A-8246-4BA4-AE5B-76104861E7DC"
PREHASHED = sha("prehashed@example.com")


def test_first_run_creates_list_and_audience_with_normalized_members(
    emulator, base_config, run_target
):
    rows = [
        {"segment_name": " VIP ", "action": "add", "email": "  Alice@Example.COM "},
        {"segment_name": "VIP", "action": "ADD", "email": "bob@example.com", "maid": MAID},
        {"segment_name": "VIP", "action": " add", "email_sha256": PREHASHED.upper()},
        {"segment_name": "VIP", "action": "add", "idfa": "  " + MAID.lower()},
        {"segment_name": "VIP", "action": "add", "email": "alice@example.com"},  # duplicate
    ]
    run = run_target(base_config, [*records(rows), state({"bookmarks": {"customers": {"id": 5}}})])
    assert run.returncode == 0, run.stderr

    created = lists_named(emulator, "VIP")
    assert len(created) == 1
    expected = {
        email_hash("alice@example.com"),
        email_hash("bob@example.com"),
        MAID_HASH_OF(MAID),
        PREHASHED,
    }
    assert set(created[0]["members"]) == expected

    audiences = emulator.state()["audiences"]
    assert len(audiences) == 1
    assert audiences[0]["name"] == "VIP audience"
    assert audiences[0]["audience_type"] == "CUSTOMER_LIST"
    assert audiences[0]["rule"] == {"customer_list_id": created[0]["id"]}

    # stdout carries STATE lines only; the last echoes the tap's bookmark plus our report
    final = run.states[-1]
    assert final["bookmarks"] == {"customers": {"id": 5}}
    report = final["pinterest_audience"]
    assert report["segment_id"] == created[0]["id"]
    assert report["segment_name"] == "VIP"
    assert report["audience_id"] == audiences[0]["id"]
    assert report["ad_account_id"] == AD_ACCOUNT
    assert report["records_received"] == 5
    assert report["records_skipped"] == {}
    assert report["identifiers_added"] == 4
    assert report["identifiers_removed"] == 0
    assert report["requests"] >= 3
    assert "fewer than" not in run.stderr
    assert "Only 4 distinct identifiers" in run.stderr  # under Pinterest's 100-user minimum
    for raw in ("Alice@Example.COM", "alice@example.com", "bob@example.com", MAID, MAID.lower()):
        assert raw not in run.stderr
        assert raw not in run.stdout
    assert ACCESS_TOKEN not in run.stderr


def test_second_run_with_audience_id_adds_and_removes_without_creating(
    emulator, base_config, run_target
):
    first = [
        {"segment_name": "VIP", "action": "add", "email": f"user{i}@example.com"} for i in range(5)
    ]
    run1 = run_target(base_config, records(first))
    assert run1.returncode == 0, run1.stderr
    list_id = run1.final["segment_id"]
    audience_id = run1.final["audience_id"]
    n_writes = len(writes(emulator))

    second = [
        {"segment_name": "VIP", "action": "remove", "email": "user0@example.com"},
        {"segment_name": "VIP", "action": "remove", "email": "USER1@example.com "},
        {"segment_name": "VIP", "action": "add", "email": "new@example.com"},
    ]
    config = {**base_config, "audience_id": audience_id}
    del config["audience_name"]
    run2 = run_target(config, records(second))
    assert run2.returncode == 0, run2.stderr
    assert len(emulator.state()["lists"]) == 1
    assert len(emulator.state()["audiences"]) == 1
    new_writes = writes(emulator)[n_writes:]
    assert {w["method"] for w in new_writes} == {"PATCH"}
    assert all("/customer_lists/" + list_id in w["path"] for w in new_writes)
    assert members(emulator, list_id) == {email_hash(f"user{i}@example.com") for i in (2, 3, 4)} | {
        email_hash("new@example.com")
    }
    assert run2.final["identifiers_removed"] == 2
    assert run2.final["identifiers_added"] == 1
    assert run2.final["audience_id"] == audience_id


def test_later_action_wins_within_and_across_requests(emulator, base_config, run_target):
    rows = [
        {"segment_name": "S", "action": "add", "email": "keep@example.com"},
        {"segment_name": "S", "action": "add", "email": "flip@example.com"},
        {"segment_name": "S", "action": "remove", "email": "FLIP@example.com"},  # same request
        {"segment_name": "S", "action": "add", "email": "a1@example.com"},
        {"segment_name": "S", "action": "add", "email": "a2@example.com"},
        {"segment_name": "S", "action": "add", "email": "back@example.com"},
        {"segment_name": "S", "action": "remove", "email": "a1@example.com"},  # later request
        {"segment_name": "S", "action": "remove", "email": "back@example.com"},
        {"segment_name": "S", "action": "add", "email": "back@example.com"},  # re-added last
    ]
    config = {**base_config, "identifiers_per_request": 2}
    run = run_target(config, records(rows))
    assert run.returncode == 0, run.stderr
    (created,) = lists_named(emulator, "S")
    assert set(created["members"]) == {
        email_hash(e) for e in ("keep@example.com", "a2@example.com", "back@example.com")
    }
    assert all(w["n_records"] <= 2 for w in writes(emulator) if "customer_lists" in w["path"])


def test_removes_before_the_list_exists_are_counted(emulator, base_config, run_target):
    rows = [
        {"segment_name": "Fresh", "action": "remove", "email": "gone@example.com"},
        {"segment_name": "Fresh", "action": "add", "email": "here@example.com"},
    ]
    run = run_target({**base_config, "identifiers_per_request": 1}, records(rows))
    assert run.returncode == 0, run.stderr
    assert run.final["removes_without_list"] == 1
    (created,) = lists_named(emulator, "Fresh")
    assert set(created["members"]) == {email_hash("here@example.com")}


def test_dry_run_sends_no_write_and_reports(emulator, base_config, run_target):
    rows = [
        {"segment_name": "Dry", "action": "add", "email": f"d{i}@example.com"} for i in range(3)
    ] + [{"segment_name": "Dry", "action": "remove", "email": "x@example.com"}]
    run = run_target(
        {**base_config, "dry_run": True},
        [*records(rows), state({"bookmarks": {"customers": {"id": 4}}})],
    )
    assert run.returncode == 0, run.stderr
    assert writes(emulator) == []
    assert emulator.state()["lists"] == []
    # a dry run never writes STATE: Meltano would store it and lose the tap's bookmark
    assert run.stdout == ""
    report_line = next(line for line in run.stderr.splitlines() if "Dry run report:" in line)
    report = json.loads(report_line.split("Dry run report: ", 1)[1])
    assert report["dry_run"] is True
    assert report["identifiers_added"] == 3
    assert report["removes_without_list"] == 1
    assert "would create Customer List 'Dry'" in run.stderr


def test_dry_run_without_credentials_contacts_nobody(emulator, base_config, run_target):
    config = {**base_config, "dry_run": True}
    del config["access_token"]
    rows = [{"segment_name": "Dry", "action": "add", "email": "d@example.com"}]
    run = run_target(config, records(rows))
    assert run.returncode == 0, run.stderr
    assert emulator.state()["requests"] == []


def test_two_segments_fail_and_nothing_of_that_batch_is_written(emulator, base_config, run_target):
    rows = [
        {"segment_name": "One", "action": "add", "email": "a@example.com"},
        {"segment_name": "One", "action": "add", "email": "b@example.com"},
        {"segment_name": "Two", "action": "add", "email": "c@example.com"},
    ]
    run = run_target(base_config, records(rows))
    assert run.returncode != 0
    assert "record 3" in run.stderr
    assert "'One'" in run.stderr and "'Two'" in run.stderr
    assert writes(emulator) == []
    assert "Traceback" not in run.stderr


def test_segment_switch_after_a_written_batch_keeps_the_earlier_batch(
    emulator, base_config, run_target
):
    rows = [
        {"segment_name": "One", "action": "add", "email": "a@example.com"},
        {"segment_name": "One", "action": "add", "email": "b@example.com"},
        {"segment_name": "One", "action": "add", "email": "c@example.com"},
        {"segment_name": "One", "segment_id": "77", "action": "add", "email": "d@example.com"},
    ]
    run = run_target({**base_config, "identifiers_per_request": 2}, records(rows))
    assert run.returncode != 0
    assert "record 4" in run.stderr
    (created,) = lists_named(emulator, "One")
    # the first full batch was written; the batch holding record 4 was not
    assert set(created["members"]) == {email_hash("a@example.com"), email_hash("b@example.com")}


def test_invalid_record_fails_by_default_naming_record_and_field(emulator, base_config, run_target):
    rows = [
        {"segment_name": "S", "action": "add", "email": "ok@example.com"},
        {"segment_name": "S", "action": "add", "email": "secret.person@nowhere"},
    ]
    run = run_target(base_config, records(rows))
    assert run.returncode != 0
    assert "record 2" in run.stderr and "'email'" in run.stderr
    assert "on_invalid_record=skip" in run.stderr
    assert "secret.person" not in run.stderr
    assert writes(emulator) == []


def test_invalid_records_are_skipped_and_counted_when_asked(emulator, base_config, run_target):
    rows = [
        {"segment_name": "S", "action": "add", "email": "ok@example.com"},
        {"segment_name": "S", "action": "add", "email": "secret.person@nowhere"},
        {"segment_name": "S", "action": "add", "maid": "not-a-uuid-secret"},
        {"segment_name": "S", "action": "explode", "email": "x@example.com"},
        {"segment_name": "S", "action": "add"},
        {"action": "add", "email": "nosegment@example.com"},
        {
            "segment_name": "S",
            "action": "add",
            "email": "ok2@example.com",
            "idfa": "bad-idfa-secret",
        },
    ]
    run = run_target({**base_config, "on_invalid_record": "skip"}, records(rows))
    assert run.returncode == 0, run.stderr
    assert run.final["records_skipped"] == {
        "invalid_email": 1,
        "invalid_maid": 1,
        "unknown_action": 1,
        "no_identifier": 1,
        "missing_segment_name": 1,
        "invalid_idfa": 1,
    }
    (created,) = lists_named(emulator, "S")
    assert set(created["members"]) == {email_hash("ok@example.com")}
    for raw in ("secret.person", "not-a-uuid-secret", "bad-idfa-secret", "nosegment@", "ok2@"):
        assert raw not in run.stderr
    assert "record 2" in run.stderr


def test_under_review_account_gets_its_own_message(emulator, base_config, run_target):
    emulator.configure(under_review=[AD_ACCOUNT])
    rows = [{"segment_name": "S", "action": "add", "email": "a@example.com"}]
    run = run_target(base_config, records(rows))
    assert run.returncode != 0
    assert "under review" in run.stderr
    assert "2626" in run.stderr and "x-pinterest-rid" in run.stderr
    assert "Traceback" not in run.stderr


def test_segment_id_updates_that_list(emulator, base_config, run_target):
    run1 = run_target(
        base_config, records([{"segment_name": "Named", "action": "add", "email": "a@example.com"}])
    )
    list_id = run1.final["segment_id"]
    rows = [{"segment_name": "Whatever", "segment_id": list_id, "action": "add", "email": "b@x.io"}]
    run2 = run_target(base_config, records(rows))
    assert run2.returncode == 0, run2.stderr
    assert len(emulator.state()["lists"]) == 1
    assert members(emulator, list_id) == {email_hash("a@example.com"), email_hash("b@x.io")}
    assert len(emulator.state()["audiences"]) == 1


def test_audience_of_another_list_stops_before_any_write(emulator, base_config, run_target):
    run1 = run_target(
        base_config, records([{"segment_name": "L1", "action": "add", "email": "a@example.com"}])
    )
    audience_id = run1.final["audience_id"]
    n = len(writes(emulator))
    rows = [{"segment_name": "L1", "segment_id": "999", "action": "add", "email": "b@example.com"}]
    run2 = run_target({**base_config, "audience_id": audience_id}, records(rows))
    assert run2.returncode != 0
    assert "exactly one Customer List" in run2.stderr
    assert len(writes(emulator)) == n


def test_rerun_adopts_list_and_audience_by_name(emulator, base_config, run_target):
    rows = [{"segment_name": "Again", "action": "add", "email": "a@example.com"}]
    run_target(base_config, records(rows))
    run2 = run_target(
        base_config, records([{"segment_name": "Again", "action": "add", "email": "b@example.com"}])
    )
    assert run2.returncode == 0, run2.stderr
    assert len(lists_named(emulator, "Again")) == 1
    assert len(emulator.state()["audiences"]) == 1
    assert run2.final["list_created"] is False and run2.final["audience_created"] is False


def test_an_audience_name_taken_by_another_list_stops_before_any_write(
    emulator, base_config, run_target
):
    """Two segments given one audience_name (a copied Meltano loader) must not make two
    Audiences of that name: the second run stops before creating its list."""
    first = run_target(
        base_config, records([{"segment_name": "Buyers", "action": "add", "email": "a@x.com"}])
    )
    assert first.returncode == 0, first.stderr
    n = len(writes(emulator))
    for dry_run in (True, False):
        second = run_target(
            {**base_config, "dry_run": dry_run},
            records([{"segment_name": "Lapsed", "action": "add", "email": "b@x.com"}]),
        )
        assert second.returncode != 0
        assert "audience_name 'VIP audience' is taken" in second.stderr, second.stderr
        assert f"Customer List {first.final['segment_id']}" in second.stderr
        assert "its own audience_name" in second.stderr
        assert "b@x.com" not in second.stderr
        assert len(writes(emulator)) == n
        assert lists_named(emulator, "Lapsed") == []
        assert len(emulator.state()["audiences"]) == 1
    # Its own audience_name goes through.
    third = run_target(
        {**base_config, "audience_name": "Lapsed audience"},
        records([{"segment_name": "Lapsed", "action": "add", "email": "b@x.com"}]),
    )
    assert third.returncode == 0, third.stderr
    assert len(emulator.state()["audiences"]) == 2


def test_several_lists_of_the_segment_name_stop_the_run(emulator, base_config, run_target):
    for _ in range(2):
        emulator_post_list(emulator, "Dup")
    run = run_target(
        base_config, records([{"segment_name": "Dup", "action": "add", "email": "a@example.com"}])
    )
    assert run.returncode != 0
    ids = [item["id"] for item in lists_named(emulator, "Dup")]
    assert all(i in run.stderr for i in ids)


def emulator_post_list(emulator, name: str) -> None:
    import requests

    response = requests.post(
        f"{emulator.api_url}/ad_accounts/{AD_ACCOUNT}/customer_lists",
        json={"name": name, "records": sha("seed@example.com"), "list_type": "EMAIL"},
        headers={"Authorization": f"Bearer {ACCESS_TOKEN}"},
        timeout=5,
    )
    assert response.status_code == 200, response.text


def test_decimal_state_is_written_back_faithfully(emulator, base_config, run_target):
    text = "".join(
        json.dumps(m) + "\n"
        for m in [
            {"type": "SCHEMA", "stream": "c", "schema": {"properties": {}}, "key_properties": []},
            {
                "type": "RECORD",
                "stream": "c",
                "record": {"segment_name": "D", "action": "add", "email": "a@b.co"},
            },
            {"type": "STATE", "value": {"bookmarks": {"c": {"score": 1.25, "n": 3}}}},
        ]
    )
    run = run_target(base_config, text)
    assert run.returncode == 0, run.stderr
    assert run.states[-1]["bookmarks"] == {"c": {"score": 1.25, "n": 3}}


def test_missing_and_bad_settings_fail_at_startup_naming_the_setting(run_target, tmp_path):
    run = run_target({"audience_name": "x", "access_token": "tok-secret-value"}, [])
    assert run.returncode != 0
    assert "ad_account_id" in run.stderr
    run = run_target({"ad_account_id": "12ab", "access_token": "tok-secret-value"}, [])
    assert run.returncode != 0
    assert "ad_account_id" in run.stderr and "audience_name" in run.stderr
    run = run_target(
        {
            "ad_account_id": "1",
            "audience_name": "x",
            "refresh_token": "r-secret-value",
            "token_cache_path": str(tmp_path / "none.json"),
        },
        [],
    )
    assert run.returncode != 0
    assert "client_id" in run.stderr and "client_secret" in run.stderr
    assert "r-secret-value" not in run.stderr and "tok-secret-value" not in run.stderr
    run = run_target(
        {
            "ad_account_id": "1",
            "audience_name": "x",
            "access_token": "t",
            "on_invalid_record": "ignore",
        },
        [],
    )
    assert run.returncode != 0 and "on_invalid_record" in run.stderr


def test_state_waits_for_its_records(emulator, base_config, run_target):
    rows = [{"segment_name": "W", "action": "add", "email": f"w{i}@example.com"} for i in range(6)]
    msgs = []
    for i, r in enumerate(records(rows)):
        msgs.append(r)
        msgs.append(state({"bookmarks": {"customers": {"id": i + 1}}}))
    run = run_target({**base_config, "identifiers_per_request": 2}, msgs)
    assert run.returncode == 0, run.stderr
    bookmarks = [s["bookmarks"]["customers"]["id"] for s in run.states if "bookmarks" in s]
    # one checkpoint per written batch of 2 records, never ahead of the data
    assert bookmarks == sorted(bookmarks)
    assert bookmarks[0] == 2 and bookmarks[-1] == 6
    assert all("pinterest_audience" in s for s in run.states)


def test_corrupt_input_lines_are_reported_by_number_not_content(emulator, base_config, run_target):
    good = json.dumps(record(id=1, segment_name="S", action="add", email="ok@example.com"))
    text = "\n".join(
        [
            json.dumps(SCHEMA),
            good,
            "",  # blank lines are passed over
            '{"type": "RECORD", "stream": "customers", "record": {"email": "leak@example.com"',
        ]
    )
    run = run_target(base_config, text + "\n")
    assert run.returncode != 0
    assert "input line 4" in run.stderr
    assert "leak@example.com" not in run.stderr
    assert "Traceback" not in run.stderr

    missing_stream = json.dumps({"type": "RECORD", "record": {"email": "leak2@example.com"}})
    run = run_target(base_config, json.dumps(SCHEMA) + "\n" + missing_stream + "\n")
    assert run.returncode != 0
    assert "stream" in run.stderr and "leak2@example.com" not in run.stderr


def test_adoption_scans_every_page_of_lists_and_audiences(emulator, base_config, run_target):
    for i in range(260):
        emulator_post_list(emulator, f"other {i}")
    emulator_post_list(emulator, "Last")
    run = run_target(
        base_config, records([{"segment_name": "Last", "action": "add", "email": "a@example.com"}])
    )
    assert run.returncode == 0, run.stderr
    assert len(lists_named(emulator, "Last")) == 1
    assert run.final["list_created"] is False
    list_pages = [
        r
        for r in emulator.state()["requests"]
        if r["method"] == "GET" and r["path"].endswith("/customer_lists")
    ]
    assert len(list_pages) == 2  # 261 lists at 250 a page


def test_records_of_batch_messages_are_uploaded_in_order(
    emulator, base_config, run_target, tmp_path
):
    batch_file = tmp_path / "batch.jsonl"
    batch_file.write_text(
        "".join(
            json.dumps(
                {"id": i, "segment_name": "B", "action": "add", "email": f"b{i}@example.com"}
            )
            + "\n"
            for i in range(3)
        )
    )
    msgs = [
        record(id=10, segment_name="B", action="add", email="first@example.com"),
        {
            "type": "BATCH",
            "stream": "customers",
            "encoding": {"format": "jsonl", "compression": "none"},
            "manifest": [batch_file.as_uri()],
        },
        record(id=11, segment_name="B", action="remove", email="b1@example.com"),
        state({"after": "batch"}),
    ]
    run = run_target(base_config, msgs)
    assert run.returncode == 0, run.stderr
    (created,) = lists_named(emulator, "B")
    assert set(created["members"]) == {
        email_hash(e) for e in ("first@example.com", "b0@example.com", "b2@example.com")
    }
    assert run.final["records_received"] == 5


def test_unexpected_errors_never_quote_input(emulator, base_config, run_target):
    config = {
        **base_config,
        "stream_maps": {"customers": {"segment_name": "str(int(grp))", "action": "'add'"}},
    }
    rows = [
        {"grp": "1", "email": "fine@example.com"},
        {"grp": "Raw.Secret@X.com", "email": "a@b.co"},
    ]
    run = run_target(config, records(rows))
    assert run.returncode == 1
    assert "Raw.Secret" not in run.stderr and "raw.secret" not in run.stderr.lower()
    assert "Unexpected ValueError" in run.stderr
    assert "Traceback" not in run.stderr


def test_bad_api_url_and_long_ids_fail_at_startup(run_target, tmp_path):
    base = {"ad_account_id": "1", "audience_name": "x", "access_token": "t"}
    run = run_target({**base, "api_url": "not a url"}, [])
    assert run.returncode != 0 and "api_url" in run.stderr
    run = run_target({**base, "ad_account_id": "1" * 19}, [])
    assert run.returncode != 0 and "ad_account_id" in run.stderr
    run = run_target({**base, "audience_name": "   "}, [])
    assert run.returncode != 0 and "audience_name" in run.stderr


def test_signal_while_idle_exits_promptly(emulator, base_config, tmp_path):
    import signal
    import time

    from conftest import start_cli

    config_path = tmp_path / "idle.json"
    config_path.write_text(json.dumps(base_config))
    proc = start_cli(config_path)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(SCHEMA) + "\n")
    proc.stdin.flush()
    time.sleep(1.5)  # the tap is idle; so is the writer
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 128 + signal.SIGTERM, err


def test_a_run_without_records_still_reports_the_ids(emulator, base_config, run_target):
    run1 = run_target(
        base_config, records([{"segment_name": "Ids", "action": "add", "email": "a@example.com"}])
    )
    n_writes = len(writes(emulator))
    run2 = run_target(base_config, [state({"bookmarks": {"customers": {"id": 1}}})])
    assert run2.returncode == 0, run2.stderr
    assert run2.states[-1]["bookmarks"] == {"customers": {"id": 1}}
    assert run2.final["segment_id"] == run1.final["segment_id"]
    assert run2.final["audience_id"] == run1.final["audience_id"]
    assert len(writes(emulator)) == n_writes  # run 2 only read


def test_adds_and_removes_fill_whole_requests_across_batches(emulator, base_config, run_target):
    # an existing list holding r0..r9
    seed = [
        {"segment_name": "Full", "action": "add", "email": f"r{i}@example.com"} for i in range(10)
    ]
    run_target(base_config, records(seed))
    n_before = len(writes(emulator))
    rows = []
    for i in range(90):  # one remove after every nine adds
        rows.append({"segment_name": "Full", "action": "add", "email": f"a{i}@example.com"})
        if i % 9 == 8:
            rows.append(
                {"segment_name": "Full", "action": "remove", "email": f"r{i // 9}@example.com"}
            )
    rows.append({"segment_name": "Full", "action": "add", "email": "r0@example.com"})  # back again
    rows.append({"segment_name": "Full", "action": "remove", "email": "a0@example.com"})
    run = run_target({**base_config, "identifiers_per_request": 10}, records(rows))
    assert run.returncode == 0, run.stderr
    (created,) = lists_named(emulator, "Full")
    want = {email_hash(f"a{i}@example.com") for i in range(1, 90)} | {email_hash("r0@example.com")}
    assert set(created["members"]) == want
    patches = writes(emulator)[n_before:]
    # full requests across batches (not an ADD and a REMOVE per batch of 10): 9 full ADDs,
    # one full REMOVE (r0..r9), then the tail: r0 added back, a0 removed
    sent = [(p["operation_type"], p["n_records"]) for p in patches]
    assert sorted(sent) == sorted([("ADD", 10)] * 9 + [("REMOVE", 10), ("ADD", 1), ("REMOVE", 1)])


def test_zero_checkpoint_interval_writes_state_after_every_batch(emulator, base_config, run_target):
    rows = []
    msgs = []
    for i in range(8):
        action = "remove" if i % 2 else "add"
        rows.append({"segment_name": "C", "action": action, "email": f"c{i}@example.com"})
    for i, rec in enumerate(records(rows), start=1):
        msgs += [rec, state({"bookmarks": {"customers": {"id": i}}})]
    config = {**base_config, "identifiers_per_request": 2, "checkpoint_interval_seconds": 0}
    run = run_target(config, msgs)
    assert run.returncode == 0, run.stderr
    bookmarks = [s["bookmarks"]["customers"]["id"] for s in run.states if "bookmarks" in s]
    assert bookmarks[:4] == [2, 4, 6, 8]


def test_odd_message_types_are_not_echoed(emulator, base_config, run_target):
    line = json.dumps({"type": "leak3@example.com", "stream": "customers"})
    run = run_target(base_config, json.dumps(SCHEMA) + "\n" + line + "\n")
    assert run.returncode != 0
    assert "input line 2" in run.stderr and "leak3" not in run.stderr


def test_null_settings_take_their_defaults(emulator, base_config, run_target):
    """Meltano and hand-written configs pass unset values as null; the settings schema
    allows it for these numbers, so each must mean its default, not crash the run (the
    enumerated settings refuse null at start-up, naming the setting)."""
    nulls = {
        key: None
        for key in (
            "identifiers_per_request",
            "checkpoint_interval_seconds",
            "max_concurrent_writes",
            "max_removal_fraction",
            "progress_interval_seconds",
            "retry_max_seconds",
            "retry_base_delay_seconds",
            "retry_max_delay_seconds",
            "max_writes_per_minute",
            "max_reads_per_minute",
            "request_timeout_seconds",
        )
    }
    rows = [{"segment_name": "Nulls", "action": "add", "email": f"u{i}@x.com"} for i in range(3)]
    run = run_target({**base_config, **nulls}, records(rows))
    assert run.returncode == 0, run.stderr
    (found,) = lists_named(emulator, "Nulls")
    assert set(found["members"]) == {email_hash(f"u{i}@x.com") for i in range(3)}


def test_the_max_record_age_is_checked_every_clock_check_records(base_config, tmp_path):
    """The per-record path reads the clock every CLOCK_CHECK_RECORDS records (singer-sdk
    reads it on each): old records still drain the sinks, at the next multiple, never
    later. In process, with every record already "too old" (max age below zero)."""
    import io

    from target_pinterest_audiences import target as target_module

    every = target_module.CLOCK_CHECK_RECORDS
    total = 2 * every + every // 2
    rows = [
        {"segment_name": "Aging", "action": "add", "email": f"age{i}@example.com"}
        for i in range(total)
    ]
    config = {**base_config, "snapshot_path": str(tmp_path / "snapshots")}
    pipeline = target_module.TargetPinterestAudiences(config=config)
    pipeline._MAX_RECORD_AGE_IN_MINUTES = -1.0  # every check finds records too old
    drained_at: list[int] = []
    drain_all = pipeline.drain_all

    def recording_drain_all(*, is_endofpipe: bool = False) -> None:
        if not is_endofpipe:
            drained_at.append(pipeline._input_line() - 1)  # line 1 is the SCHEMA
        drain_all(is_endofpipe=is_endofpipe)

    pipeline.drain_all = recording_drain_all  # type: ignore[method-assign]
    lines = "".join(json.dumps(m) + "\n" for m in [SCHEMA, *records(rows)])
    pipeline.listen(file_input=io.StringIO(lines))
    assert drained_at == [every, 2 * every]
