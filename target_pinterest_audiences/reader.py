"""Reading Singer messages: a malformed line stops the run by its number, never its content.

singer-sdk's reader logs a line it cannot parse verbatim, and quotes the whole message when
one lacks a required key: with customer data either would put a raw email into the log. This
reader names the input line and what is wrong instead, and passes blank lines over. It reads
bytes, so that a byte that is not UTF-8 is found on its own line (a text stream decodes ahead
in blocks, so it fails before the lines that precede the byte are handled, and under a C
locale it does not fail at all). It checks each message's shape before the target sees it,
so that a wrong shape stops the run here, with its line number, rather than as a crash deeper
in singer-sdk or after more of the input was written.
"""

from __future__ import annotations

import decimal
import gzip
import itertools
import json
import re
import typing as t
import urllib.parse
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import msgspec.json
from singer_sdk.exceptions import RecordsWithoutSchemaException
from singer_sdk.singerlib.encoding.simple import SimpleSingerReader
from singer_sdk.singerlib.exceptions import InvalidInputLine

#: msgspec (singer-sdk's `msgspec` extra) parses a line 4-7x faster than the stdlib; floats
#: stay Decimal as with singer-sdk's own reader. Its errors never quote the input.
_decode = msgspec.json.Decoder(float_hook=decimal.Decimal).decode

#: msgspec's error for an unexpected character ends with its 0-based byte offset.
_AT_BYTE = re.compile(r"invalid character \(byte (\d+)\)$")

#: BATCH files singer-sdk can read here (parquet needs pyarrow, not a dependency of ours).
BATCH_FORMATS = ("jsonl",)
BATCH_COMPRESSIONS = (None, "none", "gzip")


def json_type(value: object) -> str:
    """The JSON name of a value's type: what an error may say about a value it never shows."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float, decimal.Decimal)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def missing_local_file(url: str) -> bool:
    """Whether a BATCH manifest entry names a local file that does not exist.

    Checked before singer-sdk opens it, because its opener first creates the file's directory.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("", "file"):
        return False  # remote storage: its own error, described by batch_file_problem
    return not Path(urllib.parse.unquote(parsed.path)).is_file()


def batch_file_problem(exc: BaseException) -> str:
    """What went wrong reading a BATCH file, from the error's type alone: messages of file
    and JSON errors quote the path or the text, either of which may hold customer data."""
    if isinstance(exc, FileNotFoundError):
        return "the file does not exist"
    if isinstance(exc, IsADirectoryError):
        return "it is a directory, not a file"
    if isinstance(exc, PermissionError):
        return "permission to read it was denied"
    if isinstance(exc, (gzip.BadGzipFile, EOFError, zlib.error)):
        return "it is not a complete gzip file"
    if isinstance(exc, UnicodeError):
        return "it is not UTF-8 text"
    if isinstance(exc, json.JSONDecodeError):
        return "a line of it is not valid JSON"
    if isinstance(exc, (AttributeError, TypeError)):
        return f"a line of it is not a JSON object ({type(exc).__name__})"
    return f"{type(exc).__name__}"


def _without_bom(lines: t.Iterable[t.AnyStr]) -> t.Iterable[t.AnyStr]:
    """The lines, the first without a leading UTF-8 byte order mark: Windows tools start a
    file with one, and JSON parsers may ignore it (RFC 8259, section 8.1)."""
    rest = iter(lines)
    first = next(rest, None)
    if first is None:
        return rest
    if isinstance(first, bytes):
        first = first.removeprefix(b"\xef\xbb\xbf")
    else:
        first = first.removeprefix("\ufeff")
    return itertools.chain((first,), rest)


#: Bytes asked of the input per read (at most: a pipe answers with what it holds).
#: Under the size from which glibc maps a block of its own (target.py `_map_large_blocks`),
#: whose pages would be faulted in anew at every read.
READ_SIZE = 120 * 1024


class SafeSingerReader(SimpleSingerReader):
    """SimpleSingerReader whose errors say where and what, never the line's content."""

    line_number = 0
    #: Whether the whole input was read: an error after that is no input line's fault.
    finished = False
    #: Whether the input ended without a line feed (read from bytes; see _binary_lines).
    cut_short = False

    def __init__(self) -> None:
        super().__init__()
        #: Streams declared by a SCHEMA so far: a RECORD, BATCH or ACTIVATE_VERSION of any
        #: other stream is refused here, by line number (singer-sdk's error names no line).
        self.streams: set[str] = set()

    def process_lines(
        self,
        file_input: t.IO[str] | None,
        callbacks: dict[str, t.Callable[[dict], None]],
    ) -> t.Counter[str]:
        stats: dict[str, int] = defaultdict(int)
        streams = self.streams
        for line in self._lines(file_input):
            self.line_number += 1
            if not line.strip():
                continue
            message = self.deserialize_json(line)
            kind = message.get("type")
            if not isinstance(kind, str) or (callback := callbacks.get(kind)) is None:
                self._unknown_type(message, callbacks)
            if kind == "RECORD":  # the hot path: checked inline
                stream = message.get("stream")
                if (
                    not isinstance(stream, str)
                    or stream not in streams
                    or not isinstance(message.get("record"), dict)
                ):
                    self._check_record(message)
            else:
                self._check_other(kind, message)
            callback(message)
            if kind == "SCHEMA":
                streams.add(message["stream"])
            stats[kind] += 1
        self.finished = True
        return Counter(**stats)

    def _lines(self, file_input: t.IO[str] | None) -> t.Iterable[str | bytes]:
        source = file_input if file_input is not None else self.default_input
        binary = getattr(source, "buffer", None)
        if binary is not None:
            return _without_bom(self._binary_lines(binary))
        return _without_bom(self._text_lines(source))

    def _binary_lines(self, stream: t.Any) -> t.Iterator[bytes]:
        """The lines of a binary stream without their line feeds, read READ_SIZE bytes at a
        time. Iterating the stream itself makes a read() call per 4-8 KB, and each call hands
        Python's lock to the writer threads, which the reader then waits to get back (55,000
        reads for a million records). A last line without a line feed sets `cut_short`."""
        read = getattr(stream, "read1", None)
        if read is None:  # no way to read what is there without waiting for more
            for line in stream:
                self.cut_short = not line.endswith(b"\n")
                yield line
            return
        pending: list[bytes] = []  # the start of a line that spans reads
        while chunk := read(READ_SIZE):
            lines = chunk.split(b"\n")
            if len(lines) == 1:
                pending.append(chunk)
                continue
            if pending:
                pending.append(lines[0])
                lines[0] = b"".join(pending)
                pending.clear()
            last = lines.pop()
            if last:
                pending.append(last)
            yield from lines
        if pending:
            self.cut_short = True
            yield b"".join(pending)

    def _text_lines(self, source: t.Iterable[str]) -> t.Iterator[str]:
        """A text stream without a byte layer: its decoding errors still name a line."""
        try:
            yield from source
        except UnicodeDecodeError as exc:
            raise InvalidInputLine(
                f"the input after line {self.line_number} is not UTF-8 text (byte "
                f"{exc.start + 1} of a block read after it); Singer messages are UTF-8 JSON: "
                "check the tap's output encoding"
            ) from None

    def deserialize_json(self, line: str | bytes) -> dict:
        try:
            message = _decode(line)
        except msgspec.DecodeError as exc:
            raise InvalidInputLine(self._not_json(line, str(exc))) from None
        except UnicodeEncodeError:  # a str line that holds undecodable bytes (surrogateescape)
            raise InvalidInputLine(self._not_utf8()) from None
        except RecursionError:
            raise InvalidInputLine(
                f"input line {self.line_number} nests JSON arrays or objects too deeply to "
                "read; a Singer message for this target holds flat records"
            ) from None
        if not isinstance(message, dict):
            raise InvalidInputLine(
                f"input line {self.line_number} is a JSON {json_type(message)}, not a Singer "
                "message (a JSON object with a 'type')"
            )
        return message

    def _not_json(self, line: str | bytes, reason: str) -> str:
        n = self.line_number
        data = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return self._not_utf8(exc.start)
        if reason == "Input data was truncated":
            if self.cut_short if isinstance(line, bytes) else not line.endswith("\n"):
                return (
                    f"the last input line ({n}) is truncated: the input ended in the middle of "
                    "a message (did the tap crash or get stopped?); records after the last "
                    "checkpoint were not written: run again once the tap completes"
                )
            return (
                f"input line {n} is truncated: its JSON stops before the message ends; the "
                "tap's output is corrupt"
            )
        at = _AT_BYTE.search(reason)
        if at and data.startswith((b"NaN", b"Infinity"), int(at.group(1))):
            return (
                f"input line {n} holds NaN or Infinity (byte {int(at.group(1)) + 1}), which "
                "JSON does not allow; make the tap write such numbers as null or as strings"
            )
        return (
            f"input line {n} is not valid JSON ({reason}); the tap's output is corrupt or not "
            "Singer messages"
        )

    def _not_utf8(self, start: int | None = None) -> str:
        where = f" (byte {start + 1})" if start is not None else ""
        return (
            f"input line {self.line_number} is not UTF-8 text{where}; Singer messages are UTF-8 "
            "JSON: check the tap's output encoding"
        )

    def _unknown_type(self, message: dict, callbacks: t.Mapping[str, object]) -> t.NoReturn:
        n = self.line_number
        if "type" not in message:
            raise InvalidInputLine(f"input line {n} has no 'type': it is not a Singer message")
        known = ", ".join(sorted(callbacks))
        raise InvalidInputLine(f"input line {n}: its 'type' is not a Singer message type ({known})")

    def _fail(self, what: str) -> t.NoReturn:
        raise InvalidInputLine(f"input line {self.line_number}: {what}")

    def _check_stream(self, kind: str, message: dict) -> None:
        if "stream" not in message:
            self._fail(f"the {kind} message has no 'stream'")
        stream = message["stream"]
        if not isinstance(stream, str):
            self._fail(f"the {kind} message's 'stream' is a JSON {json_type(stream)}, not a string")
        if kind != "SCHEMA" and stream not in self.streams:
            declared = ", ".join(repr(s) for s in sorted(self.streams)[:5])
            before = f"streams declared so far: {declared}" if declared else "no SCHEMA came before"
            raise RecordsWithoutSchemaException(  # singer-sdk's type, as its tests expect
                f"input line {self.line_number}: the {kind} message is for a stream that no "
                f"SCHEMA message declared before it ({before}); the tap must send a stream's "
                "SCHEMA before its records"
            )

    def _check_object(self, kind: str, message: dict, key: str) -> dict:
        if key not in message:
            self._fail(f"the {kind} message has no '{key}'")
        value = message[key]
        if not isinstance(value, dict):
            self._fail(f"the {kind} message's '{key}' is a JSON {json_type(value)}, not an object")
        return value

    def _check_record(self, message: dict) -> None:
        self._check_stream("RECORD", message)
        self._check_object("RECORD", message, "record")

    def _check_other(self, kind: str, message: dict) -> None:
        if kind == "STATE":
            self._check_object(kind, message, "value")
        elif kind == "SCHEMA":
            self._check_stream(kind, message)
            schema = self._check_object(kind, message, "schema")
            if not isinstance(schema.get("properties"), dict):
                self._fail("the SCHEMA message's 'schema' has no 'properties' object")
            keys = message.get("key_properties")
            if keys is not None and not (
                isinstance(keys, list) and all(isinstance(k, str) for k in keys)
            ):
                self._fail("the SCHEMA message's 'key_properties' is not a list of strings")
        elif kind == "BATCH":
            self._check_stream(kind, message)
            encoding = self._check_object(kind, message, "encoding")
            if (
                encoding.get("format") not in BATCH_FORMATS
                or encoding.get("compression") not in BATCH_COMPRESSIONS
                or not set(encoding) <= {"format", "compression"}
            ):
                self._fail(
                    "the BATCH message's 'encoding' is not supported: 'format' must be "
                    f"{' or '.join(BATCH_FORMATS)} and 'compression' none or gzip"
                )
            manifest = message.get("manifest")
            if not isinstance(manifest, list) or not all(isinstance(m, str) for m in manifest):
                self._fail("the BATCH message's 'manifest' is not a list of file URLs")
        elif kind == "ACTIVATE_VERSION":
            self._check_stream(kind, message)
            version = message.get("version")
            if not isinstance(version, int) or isinstance(version, bool):
                self._fail("the ACTIVATE_VERSION message's 'version' is not an integer")

    def assert_line_requires(self, line_dict: dict, requires: set[str]) -> None:  # type: ignore[override]
        """singer-sdk's check of a message's keys, with the line number and without the message."""
        missing = requires.difference(line_dict)
        if missing:
            kind = line_dict.get("type")
            kind = kind if kind in ("RECORD", "SCHEMA", "STATE", "BATCH") else "Singer"
            self._fail(f"a {kind} message lacks the required key(s) {', '.join(sorted(missing))}")
