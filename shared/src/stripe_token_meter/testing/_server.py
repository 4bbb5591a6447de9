"""HTTP/1.1 keep-alive transport for FakeStripe (standard library ``http.server``).

Why separate: the transport is tuned for throughput (one write per response, no
logging, connection tracking so ``stop()`` can cut keep-alive sockets) and has nothing
to do with Stripe's rules, which live in ``fake_stripe``.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from stripe_token_meter.testing._wire import TEST_ONLY_PREFIX, Response, invalid, server_error

if TYPE_CHECKING:
    from stripe_token_meter.testing.fake_stripe import FakeStripe

_PHRASES = {s.value: s.phrase for s in HTTPStatus}


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler; one ``write`` per response, no logging."""

    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: per-request logging would dominate benchmark time."""

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        fake = self.server.fake
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._write(*invalid("Invalid Content-Length header.").render("v1"), fake)
            return
        body = self.rfile.read(length) if length else b""
        response: Response | None
        response, slot = fake._admit(method, self.path, self.headers, body)
        try:
            if not self.path.startswith(TEST_ONLY_PREFIX):
                delay = fake.latency + fake._take_stall(self.path)
                if delay > 0:
                    time.sleep(delay)
            if response is None:
                response = fake._serve(method, self.path, self.headers, body)
        except Exception as exc:
            fake._record_internal_error(exc)
            response = server_error(500).render("v2" if self.path.startswith("/v2/") else "v1")
        finally:
            fake._release(slot)
        if response is None:
            self.close_connection = True
            return
        self._write(*response, fake)

    def _write(
        self, status: int, body: bytes, extra: list[tuple[str, str]], fake: FakeStripe
    ) -> None:
        lines = [
            f"HTTP/1.1 {status} {_PHRASES.get(status, 'Unknown')}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            f"Request-Id: req_fake{next(fake._request_ids):012d}",
        ]
        lines.extend(f"{k}: {v}" for k, v in extra)
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.wfile.write(head + body)
        except OSError:
            self.close_connection = True


class Server(ThreadingHTTPServer):
    """Threaded server that remembers its connections so ``stop()`` can cut them."""

    daemon_threads = True
    request_queue_size = 512
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeStripe) -> None:
        self.fake = fake
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        """Skip HTTPServer's reverse-DNS ``getfqdn`` lookup, which can stall start-up."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that died mid-request (kill -9, a stopped process) resets its connection,
        as clients of Stripe do: nothing to report. Anything else is printed as usual."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def close_all_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
