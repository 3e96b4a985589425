"""HTTP plumbing: the threaded server, the request handler, request framing."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from target_pinterest_audiences.emulator.state import _Config

if TYPE_CHECKING:
    from target_pinterest_audiences.emulator.server import Emulator

MAX_BODY_BYTES = 256 * 1024 * 1024
_NO_BODY: Any = object()
_BAD_JSON: Any = object()


@dataclass
class _Request:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: Any
    body: bytes
    parsed: Any
    arrival: float
    is_write: bool
    cfg: _Config = field(default_factory=_Config)


_Reply = tuple[int, Any, dict[str, str]]


class _FramingError(Exception):
    """The request body could not be read (bad Content-Length or chunking)."""


class _Server(ThreadingHTTPServer):
    """Threaded server that remembers open sockets so stop() can end idle keep-alive threads."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.emulator = emulator
        self._conns: set[Any] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        conn, addr = super().get_request()
        with self._conns_lock:
            self._conns.add(conn)
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_all_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, hands it to the Emulator, writes the answer (or drops the socket)."""

    protocol_version = "HTTP/1.1"  # keep-alive: benchmarks send hundreds of large requests
    disable_nagle_algorithm = True  # else headers and body in two writes cost a 40 ms ACK delay
    server_version = "PinterestEmulator/1.0"
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet by default: the CLI's stdout must hold only the listening line."""
        if self.server.emulator.verbose:
            sys.stderr.write(f"emulator: {self.address_string()} {format % args}\n")

    def do_GET(self) -> None:
        self.server.emulator._serve(self)

    def do_POST(self) -> None:
        self.server.emulator._serve(self)

    def do_PATCH(self) -> None:
        self.server.emulator._serve(self)

    def do_PUT(self) -> None:
        self.server.emulator._serve(self)

    def do_DELETE(self) -> None:
        self.server.emulator._serve(self)

    def read_body(self) -> bytes:
        if str(self.headers.get("Transfer-Encoding", "")).lower() == "chunked":
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            n = int(length)
        except ValueError:
            raise _FramingError("Content-Length is not a number") from None
        if n < 0 or n > MAX_BODY_BYTES:
            raise _FramingError("Content-Length out of range")
        data = self.rfile.read(n)
        if len(data) != n:
            raise _FramingError("body shorter than Content-Length")
        return data

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _FramingError("bad chunk size") from None
            if size == 0:
                while self.rfile.readline(8192).strip():  # trailers
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise _FramingError("body too large")
            parts.append(self.rfile.read(size))
            self.rfile.readline(8)

    def send_reply(self, status: int, payload: Any, rid: str, headers: dict[str, str]) -> None:
        data = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-pinterest-rid", rid)
        for key, value in headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
