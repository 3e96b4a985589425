"""Many segments in one run: every stream is its own Customer List and Audience (issue 16).

The installed CLI against the emulator over HTTP, as in test_target_e2e.py.
"""

from __future__ import annotations

from typing import Any

from conftest import email_hash, lists_named, members, writes

from target_pinterest_audiences.emulator import Emulator


def schema(stream: str) -> dict[str, Any]:
    return {
        "type": "SCHEMA",
        "stream": stream,
        "schema": {"type": "object", "properties": {"id": {"type": "integer"}}},
        "key_properties": ["id"],
    }


def rec(stream: str, n: int, segment: str, email: str, action: str = "add") -> dict[str, Any]:
    return {
        "type": "RECORD",
        "stream": stream,
        "record": {"id": n, "segment_name": segment, "action": action, "email": email},
    }


def segment_rows(stream: str, segment: str, emails: list[str]) -> list[dict[str, Any]]:
    return [rec(stream, i, segment, email) for i, email in enumerate(emails)]


def audience_named(emu: Emulator, name: str) -> list[dict[str, Any]]:
    return [a for a in emu.state()["audiences"] if a["name"] == name]


THREE = {
    "vip": ("VIP", [f"vip{i}@example.com" for i in range(7)]),
    "lapsed": ("Lapsed", [f"lapsed{i}@example.com" for i in range(5)]),
    "newsletter": ("Newsletter", [f"news{i}@example.com" for i in range(3)]),
}


def three_streams(state_value: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [schema(stream) for stream in THREE]
    # interleaved, as a tap reading several tables may send them
    rows = [segment_rows(stream, seg, emails) for stream, (seg, emails) in THREE.items()]
    for i in range(max(len(r) for r in rows)):
        messages += [r[i] for r in rows if i < len(r)]
    if state_value is not None:
        messages.append({"type": "STATE", "value": state_value})
    return messages


def test_three_streams_make_three_lists_and_audiences_each_exact_and_rerun_adopts_them(
    emulator, base_config, run_target
):
    config = {
        **base_config,
        "audiences": {
            "vip": {"audience_name": "VIP audience"},
            "lapsed": {"audience_name": "Lapsed audience", "audience_description": "gone"},
        },
        # newsletter has no entry: the top-level audience_name, with {stream} filled in
        "audience_name": "Audience of {stream}",
    }
    run = run_target(config, three_streams({"bookmarks": {"all": 1}}), with_schema=False)
    assert run.returncode == 0, run.stderr
    names = {
        "vip": "VIP audience",
        "lapsed": "Lapsed audience",
        "newsletter": "Audience of newsletter",
    }
    for stream, (segment, emails) in THREE.items():
        made = lists_named(emulator, segment)
        assert len(made) == 1, segment
        assert members(emulator, made[0]["id"]) == {email_hash(e) for e in emails}
        audience = audience_named(emulator, names[stream])
        assert len(audience) == 1
        assert audience[0]["rule"] == {"customer_list_id": made[0]["id"]}
    assert audience_named(emulator, "Lapsed audience")[0]["description"] == "gone"

    final = run.states[-1]
    assert final["bookmarks"] == {"all": 1}
    assert "pinterest_audience" not in final  # several streams: one entry each
    reports = final["pinterest_audiences"]
    assert set(reports) == set(THREE)
    for stream, (segment, emails) in THREE.items():
        assert reports[stream]["segment_name"] == segment
        assert reports[stream]["audience_name"] == names[stream]
        assert reports[stream]["identifiers_added"] == len(emails)
        assert reports[stream]["list_created"] is True
        assert reports[stream]["records_received"] == len(emails)
    assert sum(r["requests"] for r in reports.values()) == len(writes(emulator)) + sum(
        1 for r in emulator.state()["requests"] if r["method"] == "GET"
    )
    # one summary line per stream and a total
    for stream in THREE:
        assert f"Run summary (stream '{stream}'): Customer List" in run.stderr
    assert "Run summary: 3 streams in all; records received 15" in run.stderr

    before = len(emulator.state()["audiences"]), len(emulator.state()["lists"])
    again = run_target(config, three_streams(), with_schema=False)
    assert again.returncode == 0, again.stderr
    assert (len(emulator.state()["audiences"]), len(emulator.state()["lists"])) == before
    for report in again.states[-1]["pinterest_audiences"].values():
        assert report["list_created"] is False and report["audience_created"] is False


def test_a_single_stream_keeps_the_state_key_of_earlier_releases(emulator, base_config, run_target):
    run = run_target(
        base_config,
        [schema("customers"), *segment_rows("customers", "VIP", ["a@example.com"])],
        with_schema=False,
    )
    assert run.returncode == 0, run.stderr
    final = run.states[-1]
    assert final["pinterest_audience"]["segment_name"] == "VIP"
    assert final["pinterest_audiences"] == {"customers": final["pinterest_audience"]}
    assert "Run summary: Customer List" in run.stderr  # the line as before, no stream named


def test_segment_name_placeholder_names_each_streams_audience(emulator, base_config, run_target):
    config = {**base_config, "audience_name": "{segment_name} (Pinterest)"}
    messages = [
        schema("a"),
        schema("b"),
        *segment_rows("a", "Gold", ["g@example.com"]),
        *segment_rows("b", "Silver", ["s@example.com"]),
    ]
    run = run_target(config, messages, with_schema=False)
    assert run.returncode == 0, run.stderr
    gold, silver = lists_named(emulator, "Gold")[0], lists_named(emulator, "Silver")[0]
    assert audience_named(emulator, "Gold (Pinterest)")[0]["rule"]["customer_list_id"] == gold["id"]
    assert (
        audience_named(emulator, "Silver (Pinterest)")[0]["rule"]["customer_list_id"]
        == silver["id"]
    )


def test_two_streams_naming_one_audience_stop_before_any_write(emulator, base_config, run_target):
    # no `audiences` entry for either stream and a plain top-level name: both would write it
    messages = [
        schema("a"),
        schema("b"),
        *segment_rows("a", "Gold", ["g@example.com"]),
        *segment_rows("b", "Silver", ["s@example.com"]),
    ]
    run = run_target(base_config, messages, with_schema=False)
    assert run.returncode == 1
    assert "streams 'a' and 'b' would both write the Audience 'VIP audience'" in run.stderr
    assert writes(emulator) == []


def test_two_streams_of_one_segment_stop_naming_both(emulator, base_config, run_target):
    config = {
        **base_config,
        "audiences": {"a": {"audience_name": "A"}, "b": {"audience_name": "B"}},
        "identifiers_per_request": 1,
    }
    messages = [
        schema("a"),
        schema("b"),
        *segment_rows("a", "Gold", ["g@example.com"]),
        *segment_rows("b", "Gold", ["h@example.com"]),
    ]
    run = run_target(config, messages, with_schema=False)
    assert run.returncode == 1
    assert "streams 'a' and 'b' would both write the segment 'Gold'" in run.stderr
    assert writes(emulator) == []  # found at b's first record, before either stream wrote


def test_a_stream_without_an_audience_is_refused_at_its_schema(emulator, base_config, run_target):
    config = {**base_config, "audiences": {"a": {"audience_name": "A"}}}
    del config["audience_name"]
    messages = [
        schema("a"),
        *segment_rows("a", "Gold", ["g@example.com"]),
        schema("orphans"),
        *segment_rows("orphans", "Other", ["o@example.com"]),
    ]
    run = run_target(config, messages, with_schema=False)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert "stream 'orphans' has no Audience" in last
    assert "audiences" in last
    assert lists_named(emulator, "Other") == []


def test_a_second_segment_within_one_stream_is_still_refused_naming_the_stream(
    emulator, base_config, run_target
):
    config = {
        **base_config,
        "audiences": {"a": {"audience_name": "A"}, "b": {"audience_name": "B"}},
    }
    messages = [
        schema("a"),
        schema("b"),
        rec("a", 1, "Gold", "g@example.com"),
        rec("b", 1, "Silver", "s@example.com"),
        rec("b", 2, "Bronze", "b@example.com"),
    ]
    run = run_target(config, messages, with_schema=False)
    assert run.returncode == 1
    assert "stream 'b'" in run.stderr and "'Bronze'" in run.stderr
    assert "g@example.com" not in run.stderr


def test_stream_maps_split_one_source_into_segments(emulator, base_config, run_target):
    config = {
        **base_config,
        "audience_name": "Members {stream}",
        "stream_maps": {
            "gold": {"__source__": "members", "__filter__": "segment_name == 'Gold'"},
            "silver": {"__source__": "members", "__filter__": "segment_name == 'Silver'"},
            "members": None,
        },
    }
    rows = [
        rec("members", 1, "Gold", "g1@example.com"),
        rec("members", 2, "Silver", "s1@example.com"),
        rec("members", 3, "Gold", "g2@example.com"),
        rec("members", 4, "Silver", "s2@example.com"),
    ]
    run = run_target(config, [schema("members"), *rows], with_schema=False)
    assert run.returncode == 0, run.stderr
    gold, silver = lists_named(emulator, "Gold"), lists_named(emulator, "Silver")
    assert len(gold) == 1 and len(silver) == 1
    assert members(emulator, gold[0]["id"]) == {
        email_hash("g1@example.com"),
        email_hash("g2@example.com"),
    }
    assert members(emulator, silver[0]["id"]) == {
        email_hash("s1@example.com"),
        email_hash("s2@example.com"),
    }
    assert {a["name"] for a in emulator.state()["audiences"]} == {"Members gold", "Members silver"}
    assert set(run.states[-1]["pinterest_audiences"]) == {"gold", "silver"}


def test_tap_state_waits_for_every_stream(emulator, base_config, run_target):
    """A tap STATE is passed on only once every stream confirmed the records before it: a
    stream whose writes fail keeps it back, though the other stream's were confirmed."""
    config = {
        **base_config,
        "audiences": {"a": {"audience_name": "A"}, "b": {"audience_name": "B"}},
        "retry_max_seconds": 1,
    }
    first = run_target(
        config,
        [
            schema("a"),
            schema("b"),
            rec("a", 1, "Gold", "g@example.com"),
            rec("b", 1, "Silver", "s@example.com"),
        ],
        with_schema=False,
    )
    assert first.returncode == 0, first.stderr
    silver = lists_named(emulator, "Silver")[0]["id"]
    emulator.add_fault(
        "status", status=400, code=1, message="Invalid", methods=["PATCH"], path_contains=silver
    )
    messages = [
        schema("a"),
        schema("b"),
        rec("a", 2, "Gold", "g2@example.com"),
        rec("b", 2, "Silver", "s2@example.com"),
        {"type": "STATE", "value": {"bookmarks": {"x": 2}}},
    ]
    run = run_target(config, messages, with_schema=False)
    assert run.returncode == 1
    gold = lists_named(emulator, "Gold")[0]["id"]
    assert email_hash("g2@example.com") in members(emulator, gold)  # a's write was confirmed
    assert all("bookmarks" not in line for line in run.states)
    final = run.states[-1]["pinterest_audiences"]
    assert final["a"]["identifiers_added"] == 1 and final["b"]["identifiers_added"] == 0


def test_mirror_stream_held_back_by_the_cap_does_not_stop_the_others(
    emulator, base_config, run_target
):
    config = {
        **base_config,
        "audiences": {
            "m": {"audience_name": "Mirror", "sync_mode": "mirror"},
            "e": {"audience_name": "Events"},
        },
    }
    mirror_emails = [f"m{i}@example.com" for i in range(10)]
    first = run_target(
        config,
        [schema("m"), *segment_rows("m", "Mirrored", mirror_emails)],
        with_schema=False,
    )
    assert first.returncode == 0, first.stderr
    # 5 of 10 gone from the source: over the 20% cap
    messages = [
        schema("m"),
        schema("e"),
        *segment_rows("m", "Mirrored", mirror_emails[:5]),
        *segment_rows("e", "Evented", ["e1@example.com", "e2@example.com"]),
    ]
    run = run_target(config, messages, with_schema=False)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert "'m'" in last and "held back" in last
    mirrored = lists_named(emulator, "Mirrored")[0]["id"]
    assert len(members(emulator, mirrored)) == 10  # nothing removed
    evented = lists_named(emulator, "Evented")
    assert len(evented) == 1 and len(members(emulator, evented[0]["id"])) == 2
    reports = run.states[-1]["pinterest_audiences"]
    assert reports["m"]["removals_held_back"] == 5
    assert reports["e"]["complete"] is True and reports["m"]["complete"] is False


def test_progress_lines_name_each_stream(emulator, base_config, run_target):
    config = {
        **base_config,
        "audience_name": "{stream}",
        "progress_interval_seconds": 0.2,
    }
    emulator.configure(write_delay_ms=400)
    run = run_target(config, three_streams(), with_schema=False)
    assert run.returncode == 0, run.stderr
    for stream in THREE:
        assert f"Progress of stream '{stream}' after" in run.stderr


def test_settings_name_the_stream_entry_that_is_wrong(emulator, base_config, run_target):
    config = {**base_config, "audiences": {"a": {"audience_name": "A", "colour": "red"}}}
    run = run_target(config, [schema("a")], with_schema=False)
    assert run.returncode == 1
    assert "audiences.a" in run.stderr
