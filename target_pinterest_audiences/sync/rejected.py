"""The rejected-records file: which source rows were skipped, found again by their keys.

With on_invalid_record=skip, counts by reason do not say which rows of the source to fix.
When rejected_records_path is set, every skipped record is appended as one JSON line: its
record number, stream, key properties with their values, the field at fault and the
reason. Identifier values are never written, not even when an identifier field is a key
property, or a key property holds an identifier's value (a column renamed or copied into
`email` by stream_maps keeps its own name in the key properties), or any key value looks like
an identifier (an email address, a device id, a hex digest), whatever the identifier fields
hold: the file exists to find rows, and is often passed around more freely than the data. It
is private (mode 0600) whatever the umask, also when it already existed, and a symbolic link
in its place is refused, never followed.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from singer_sdk.singerlib.json import serialize_json

from target_pinterest_audiences.errors import TargetError
from target_pinterest_audiences.identifiers import IDENTIFIER_FIELDS
from target_pinterest_audiences.private_files import UnsafePath, open_private

#: Key properties never written: identifier fields, whatever their case or padding.
_IDENTIFIER_NAMES = frozenset(IDENTIFIER_FIELDS)


#: Values that look like an identifier, whichever field holds them: an email address, a device
#: id (a UUID, with or without its dashes or braces) or a hex digest (SHA-256, MD5 or SHA-1).
_LOOKS_LIKE_IDENTIFIER = re.compile(
    r"\s*(?:[^@\s]+@[^@\s]+"
    r"|\{?[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\}?"
    r"|[0-9a-f]{40}|[0-9a-f]{64})\s*",
    re.IGNORECASE,
)


def looks_like_identifier(value: Any) -> bool:
    """Whether a key's value could be a person's identifier (never written to the file)."""
    return isinstance(value, str) and _LOOKS_LIKE_IDENTIFIER.fullmatch(value) is not None


def _folded(value: str) -> str:
    """How an identifier and a key holding it compare: trimmed, case folded."""
    return value.strip().casefold()


class RejectedRecords:
    """Appends one JSON line per skipped record; opened at start-up, so a bad path stops
    the run before anything is written to Pinterest."""

    def __init__(self, path: str | Path, logger: logging.Logger) -> None:
        self.path = Path(path).expanduser()
        self.logger = logger
        #: Lines this run appended.
        self.lines = 0
        self._left_out_said: set[str] = set()
        where = f"setting 'rejected_records_path' ({self.path})"
        try:
            what = "the rejected-records file (setting 'rejected_records_path')"
            fd = open_private(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, what)
        except UnsafePath as exc:
            raise TargetError(str(exc)) from None
        except OSError as exc:
            raise TargetError(
                f"{where}: cannot open the file for appending ({exc.strerror}); point it at a "
                "file in an existing, writable directory"
            ) from None
        # Line-buffered: every line is on disk as soon as it is written, even if the run dies.
        self._file = os.fdopen(fd, "a", encoding="utf-8", buffering=1)

    def add(
        self,
        *,
        record_number: int,
        stream: str,
        key_properties: Iterable[str],
        record: Mapping[str, Any],
        field: str,
        reason: str,
    ) -> None:
        """One skipped record: its keys (never an identifier field, nor a key holding the
        value of one: a column renamed or copied into `email` by stream_maps), the field
        and the reason."""
        identifier_values = {
            _folded(value)
            for field in IDENTIFIER_FIELDS
            if isinstance(value := record.get(field), str) and value.strip()
        }
        keys: dict[str, Any] = {}
        left_out = []
        for key in key_properties:
            value = record.get(key)
            if (
                key.strip().lower() in _IDENTIFIER_NAMES
                or (isinstance(value, str) and _folded(value) in identifier_values)
                or looks_like_identifier(value)
            ):
                left_out.append(key)
            else:
                keys[key] = value
        if left_out and stream not in self._left_out_said:
            self._left_out_said.add(stream)
            self.logger.warning(
                "Rejected-records file: key properties %s of stream '%s' are identifier "
                "fields or hold their values, so their values are left out of %s "
                "(identifiers are never written); other key properties are written",
                ", ".join(f"'{key}'" for key in left_out),
                stream,
                self.path,
            )
        line = serialize_json(
            {
                "record_number": record_number,
                "stream": stream,
                "keys": keys,
                "field": field,
                "reason": reason,
            }
        )
        try:
            self._file.write(line + "\n")
        except OSError as exc:
            raise TargetError(
                f"cannot append to the rejected-records file {self.path} ({exc.strerror})"
            ) from None
        self.lines += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
