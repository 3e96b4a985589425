"""Mirror sync under messy input, crashes and parallel runs (review findings).

Each test drives the installed CLI against the emulator and checks the mirror invariant:
after a run that completed, the list holds exactly the source's members, in one list and
one audience, and the snapshot confirms nothing Pinterest does not hold.
"""

from __future__ import annotations

from conftest import lists_named, record
from test_mirror import (
    SEGMENT,
    emails,
    mirror_config,
    write_log,
)


def test_a_new_segment_whose_records_all_say_remove_writes_nothing(
    emulator, base_config, run_target
):
    """No list exists and no member creates one: the removes have nothing to remove from
    (as in events mode), instead of a PATCH to customer_lists/None that fails the run."""
    config = mirror_config(base_config)
    messages = [
        record(id=i, segment_name=SEGMENT, email=a, action="remove")
        for i, a in enumerate(emails(range(3)))
    ]
    run = run_target(config, messages)
    assert run.returncode == 0, run.stderr
    assert write_log(emulator) == []
    assert lists_named(emulator, SEGMENT) == []
    assert run.final["removes_without_list"] == 3
    assert run.final["identifiers_removed"] == 0
