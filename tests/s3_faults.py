"""An HTTP proxy on 127.0.0.1 that injects S3's failures in front of a real S3 server (moto).

Per request, with probability ``rate`` (1.0: faults never stop), the next kind of a seeded,
shuffled rotation of ``kinds`` (so every kind turns up once the faults outnumber the kinds):

    500        an InternalError XML error, the request never forwarded
    503        a bare 503 with an empty body, as a load balancer sends
    slowdown   503 SlowDown, S3's throttling error
    reset      an RST (SO_LINGER 0): ``reset:before`` anything is sent, ``reset:request`` after
               forwarding half the request body upstream (a PUT cut off mid-upload), or
               ``reset:response`` part way through the response
    stall      silence for ``stall_s`` (set it past the client's read timeout), then a close:
               ``stall:head`` before the status line, ``stall:body`` after the headers and half
               the body
    truncate   the headers with the full Content-Length, part of the body, then a clean close
               (no body: the status line cut before its code ends, ``HTTP/1.1 20``; http.client
               takes a close anywhere after the code for the end of a bodiless response)
    short      not in the default rotation: a body cut short behind a Content-Length rewritten to
               match, which no HTTP client can notice (only a checksum or the format can)

A kind may name its variant (``"reset:request"``). ``match(method, target)`` limits faults to
some requests. ``counts`` and ``details`` count what was really injected.

    with S3FaultProxy(moto_endpoint, rate=0.3, seed=1) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        ...
        print(proxy.report())
"""

from __future__ import annotations

import random
import socket
import socketserver
import struct
import threading
from collections import Counter
from typing import Callable
from urllib.parse import urlparse

KINDS = ("500", "503", "slowdown", "reset", "stall", "truncate")
_VARIANTS = {"reset": ("before", "request", "response"), "stall": ("head", "body")}
_ERRORS = {
    "500": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "Service Unavailable", None, None),
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
}


class Message:
    """One HTTP message as it travelled: the head (start line and headers) and the framed body."""

    def __init__(self, head: bytes, body: bytes):
        self.head, self.body = head, body
        lines = head.decode("latin-1").split("\r\n")
        self.start = lines[0]
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}

    @property
    def raw(self) -> bytes:
        return self.head + self.body


def _read_head(stream) -> bytes | None:
    lines = []
    while True:
        line = stream.readline(65537)
        if not line:
            return None  # closed between messages
        if line in (b"\r\n", b"\n"):
            return b"".join(lines) + b"\r\n" if lines else None
        lines.append(line)


def _read_body(stream, headers: dict, *, until_close: bool) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            line = stream.readline()
            parts.append(line)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (trailer := stream.readline()) not in (b"\r\n", b"\n", b""):
                    parts.append(trailer)
                parts.append(b"\r\n")
                return b"".join(parts)
            parts.append(stream.read(size + 2))
    if "content-length" in headers:
        return stream.read(int(headers["content-length"]))
    return stream.read() if until_close else b""


def _reset(sock: socket.socket, *files) -> None:
    """Close with an RST instead of a FIN (the makefile()s hold the descriptor open)."""
    for f in files:
        f.close()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class FaultSchedule:
    def __init__(self, rate: float, kinds: tuple[str, ...], seed: int, match: Callable | None):
        self.rate, self.kinds, self.match = rate, tuple(kinds), match
        self._rng = random.Random(seed)
        self._rotation: list[str] = []
        self._lock = threading.Lock()

    def next(self, method: str, target: str) -> tuple[str, str] | None:
        """(kind, variant) for the next request, or None to pass it through."""
        with self._lock:
            if self.match is not None and not self.match(method, target):
                return None
            if self._rng.random() >= self.rate:
                return None
            if not self._rotation:
                self._rotation = list(self.kinds)
                self._rng.shuffle(self._rotation)
            kind, _, variant = self._rotation.pop().partition(":")
            return kind, variant or self._rng.choice(_VARIANTS.get(kind, ("",)))

    def cut(self, n: int) -> int:
        """Where to cut n bytes: somewhere strictly inside."""
        with self._lock:
            return self._rng.randint(1, n - 1) if n > 1 else 0


class _Handler(socketserver.BaseRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        self.client_in = self.request.makefile("rb")
        self.upstream: socket.socket | None = None
        try:
            while self._one_request():
                pass
        except OSError:
            pass  # the client gave up on a stalled or broken connection
        finally:
            self.client_in.close()
            self._drop_upstream()

    def _one_request(self) -> bool:
        head = _read_head(self.client_in)
        if head is None:
            return False
        request = Message(head, b"")
        if request.headers.get("expect", "").lower() == "100-continue":
            # Answer for the server, which never sees the header: one exchange, not two.
            self.request.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            head = b"".join(line + b"\r\n" for line in head.split(b"\r\n")
                            if line and not line.lower().startswith(b"expect:")) + b"\r\n"
        request = Message(head, _read_body(self.client_in, request.headers, until_close=False))
        method, target = request.start.split(" ")[:2]
        self.server.proxy.count_request()
        fault = self.server.schedule.next(method, target)
        if fault is None:
            self.request.sendall(self._forward(request, method).raw)
            return True
        return self._inject(*fault, request, method)

    def _inject(self, kind: str, variant: str, request: Message, method: str) -> bool:
        """Apply one fault; False when the connection is spent and the client must open another.
        Each fault is counted before the client can see it, so a test reading the counts after
        its call returns finds them complete."""
        proxy, schedule = self.server.proxy, self.server.schedule
        if kind in _ERRORS:
            proxy.count(kind, kind)
            self.request.sendall(_error_response(kind, method))
            return True
        if kind == "reset" and variant == "before":
            proxy.count(kind, "reset:before")
            _reset(self.request, self.client_in)
            return False
        if kind == "reset" and variant == "request" and request.body:
            self._upstream_socket().sendall(request.head + request.body[: len(request.body) // 2])
            self._drop_upstream(reset=True)
            proxy.count(kind, "reset:request")
            _reset(self.request, self.client_in)
            return False
        if kind == "stall" and variant == "head":
            proxy.count(kind, "stall:head")
            self.server.stopping.wait(self.server.stall_s)
            return False
        response = self._forward(request, method)
        head, body = response.head, response.body
        if kind == "reset":
            proxy.count(kind, "reset:response")
            self.request.sendall(response.raw[: schedule.cut(len(response.raw))])
            _reset(self.request, self.client_in)
        elif kind == "stall":
            proxy.count(kind, "stall:body" if body else "stall:head")
            if body:
                self.request.sendall(head + body[: len(body) // 2])
            self.server.stopping.wait(self.server.stall_s)
        elif kind == "truncate":
            proxy.count(kind, "truncate:body" if body else "truncate:head")
            self.request.sendall(head + body[: schedule.cut(len(body))] if body else head[: schedule.cut(12)])
        elif kind == "short" and len(body) > 1 and "content-length" in response.headers:
            proxy.count(kind, "short:body")
            body = body[: schedule.cut(len(body))]
            self.request.sendall(_with_length(head, len(body)) + body)
        else:
            self.request.sendall(response.raw)  # nothing of this kind fits this response
            return True
        return False

    def _forward(self, request: Message, method: str) -> Message:
        reused = self.upstream is not None
        try:
            self._upstream_socket().sendall(request.raw)
            head = _read_head(self.upstream_in)
        except OSError:
            head = None
        if head is None and reused:  # the server dropped an idle connection: not a fault of ours
            self._drop_upstream()
            self._upstream_socket().sendall(request.raw)
            head = _read_head(self.upstream_in)
        if head is None:
            raise ConnectionError("the S3 server closed the connection")
        response = Message(head, b"")
        status = int(response.start.split(" ")[1])
        if method == "HEAD" or status in (204, 304) or status < 200:
            return response
        until_close = "content-length" not in response.headers and "chunked" not in response.headers.get(
            "transfer-encoding", "")
        body = _read_body(self.upstream_in, response.headers, until_close=until_close)
        if until_close:
            self._drop_upstream()
        return Message(head, body)

    def _upstream_socket(self) -> socket.socket:
        if self.upstream is None:
            self.upstream = socket.create_connection(self.server.upstream_addr, timeout=60)
            self.upstream_in = self.upstream.makefile("rb")
        return self.upstream

    def _drop_upstream(self, reset: bool = False) -> None:
        if self.upstream is not None:
            if reset:
                _reset(self.upstream, self.upstream_in)
            else:
                self.upstream_in.close()
                self.upstream.close()
            self.upstream = None


def _error_response(kind: str, method: str) -> bytes:
    status, phrase, code, message = _ERRORS[kind]
    body = b""
    if code is not None and method != "HEAD":
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
                f"</Message><RequestId>FAULT{status}</RequestId></Error>").encode()
    head = (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nx-amz-request-id: FAULT{status}\r\n\r\n")
    return head.encode() + body


def _with_length(head: bytes, length: int) -> bytes:
    lines = head.split(b"\r\n")
    return b"\r\n".join(b"Content-Length: %d" % length if line.lower().startswith(b"content-length:") else line
                        for line in lines)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False  # keep-alive connections idle in recv() must not hold up close()


class S3FaultProxy:
    def __init__(self, upstream: str, *, rate: float, kinds: tuple[str, ...] = KINDS, seed: int = 0,
                 match: Callable[[str, str], bool] | None = None, stall_s: float = 2.0):
        parsed = urlparse(upstream)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.upstream_addr = (parsed.hostname, parsed.port)
        self._server.schedule = FaultSchedule(rate, kinds, seed, match)
        self._server.stall_s = stall_s
        self._server.stopping = threading.Event()
        self._server.proxy = self
        self.counts: Counter[str] = Counter()   # faults injected, by kind
        self.details: Counter[str] = Counter()  # … and by variant ("reset:request", "truncate:body")
        self.requests = 0
        self._lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)
        self._thread.start()

    @property
    def schedule(self) -> FaultSchedule:
        return self._server.schedule

    def count_request(self) -> None:
        with self._lock:
            self.requests += 1

    def count(self, kind: str, detail: str) -> None:
        with self._lock:
            self.counts[kind] += 1
            self.details[detail] += 1

    def report(self) -> str:
        faults = sum(self.counts.values())
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.details.items()))
        return f"{self.requests} requests, {faults} faults injected ({kinds or 'none'})"

    def close(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "S3FaultProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
