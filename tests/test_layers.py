"""The package's rooms import one way: a lower layer never imports a higher one (issue 19).

A room is a top-level module or sub-package of target_pinterest_audiences; each has a rank, and
a module may import only rooms of a lower rank (and its own room). The emulator imports nothing
of the target: it stands for Pinterest.
"""

from __future__ import annotations

import ast
from pathlib import Path

import target_pinterest_audiences

PACKAGE = Path(target_pinterest_audiences.__file__).parent
RANKS = {
    # the bottom: rules and helpers that do no I/O of their own, or only files
    "errors": 0,
    "private_files": 0,
    "urls": 0,
    "identifiers": 0,
    "reader": 0,
    # the Pinterest API (HTTP, tokens, limits), then what the target keeps on disk
    "pinterest": 1,
    "store": 2,
    # one run's sync: resolver, writer, mirror, checkpoints, report, suppression, ...
    "sync": 3,
    "settings": 4,
    "sink": 4,
    "datasets": 5,
    "target": 6,
    "admin": 6,
}
STANDALONE = {"emulator", "__init__"}


def room_of(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def imported_rooms(path: Path) -> set[str]:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] != "target_pinterest_audiences":
                continue
            if len(parts) > 1:
                rooms.add(parts[1])
            else:
                rooms.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "target_pinterest_audiences" and len(parts) > 1:
                    rooms.add(parts[1])
    return rooms


def test_every_room_has_a_rank():
    rooms = {room_of(p) for p in PACKAGE.rglob("*.py")}
    assert rooms - STANDALONE <= set(RANKS), sorted(rooms - STANDALONE - set(RANKS))


def test_imports_flow_down():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        room = room_of(path)
        for other in imported_rooms(path) - {room}:
            if room in STANDALONE and room != "__init__":
                wrong.append(f"{path.relative_to(PACKAGE)} (the emulator) imports {other}")
            elif RANKS.get(other, 99) >= RANKS.get(room, -1):
                wrong.append(f"{path.relative_to(PACKAGE)} ({room}) imports {other}")
    assert not wrong, "\n".join(wrong)
