"""The front of one region's registry: what clients reach on the fleet file's endpoint.

Every request streams through to that region's docker-registry on its internal loopback port,
unless `"registry_auth": {region: 401|403}` in `<state_dir>/faults.json` says to refuse it.
Then it answers as a registry with auth does (distribution's JSON error body; 401 with a Bearer
challenge), so the release meets the same refusal it would meet from ACR. The knob is read on
each request: setting or clearing it takes effect at once. docker-registry itself cannot be
made to answer 403 on demand, hence this front.

    python -m localfleet.registry_front --listen 127.0.0.1:5102 --backend 127.0.0.1:40123 \
        --region westus --state-dir D

It carries every push, pull and replication copy, so it only relays bytes: bodies are copied
in blocks as they arrive (chunked in, chunked out), never held whole. Only the standard library
and localfleet.faults are imported, so it starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from localfleet.faults import read_faults

log = logging.getLogger("localfleet.registry_front")
BLOCK = 256 * 1024
# Per connection, not end to end (RFC 9110 7.6.1): each side of the front has its own.
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade", "expect",
}  # fmt: skip
REFUSALS = {
    401: ("UNAUTHORIZED", "authentication required"),
    403: ("DENIED", "requested access to the resource is denied"),
}


def refusal(state_dir: str | Path, region: str) -> int | None:
    """The status the knob makes `region`'s registry answer (401 or 403), None when it serves."""
    status = (read_faults(state_dir).get("registry_auth") or {}).get(region)
    return status if status in REFUSALS else None


class FrontServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # skopeo and buildah open several connections at once

    def __init__(self, listen: tuple[str, int], backend: tuple[str, int], region: str, state_dir: Path):
        self.backend, self.region, self.state_dir = backend, region, state_dir
        super().__init__(listen, FrontHandler)


class FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a pull is many requests
    timeout = 300  # an idle client connection is dropped after this long
    server: FrontServer
    _upstream: http.client.HTTPConnection | None = None

    def _forward(self) -> None:
        status = refusal(self.server.state_dir, self.server.region)
        if status is not None:
            return self._refuse(status)
        try:
            response = self._relay_request()
        except OSError as err:
            self._drop_upstream()
            log.warning("%s %s: registry behind the front unreachable: %s", self.command, self.path, err)
            return self._error(502, "UNAVAILABLE", f"registry behind the front unreachable: {err}")
        try:
            self._relay_response(response)
        except OSError:
            self._drop_upstream()  # half a response was sent: only closing tells the client
            self.close_connection = True

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

    def _relay_request(self) -> http.client.HTTPResponse:
        if self._upstream is None:
            self._upstream = http.client.HTTPConnection(*self.server.backend, timeout=120)
        up = self._upstream
        # Host passes through unchanged, so any URL the registry builds names the front.
        up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            if name.lower() not in HOP_BY_HOP:
                up.putheader(name, value)
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if chunked:
            up.putheader("Transfer-Encoding", "chunked")
        up.endheaders()
        if chunked:
            self._relay_chunked_body(up)
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                block = self.rfile.read(min(remaining, BLOCK))
                if not block:
                    raise ConnectionError("client closed the connection mid-body")
                up.send(block)
                remaining -= len(block)
        return up.getresponse()

    def _relay_chunked_body(self, up: http.client.HTTPConnection) -> None:
        while True:
            size = int(self.rfile.readline(1024).split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65536) not in (b"\r\n", b"\n", b""):
                    pass  # trailers: nothing a registry reads
                up.send(b"0\r\n\r\n")
                return
            up.send(b"%x\r\n" % size)
            while size > 0:
                block = self.rfile.read(min(size, BLOCK))
                if not block:
                    raise ConnectionError("client closed the connection mid-chunk")
                up.send(block)
                size -= len(block)
            self.rfile.readline(1024)
            up.send(b"\r\n")

    def _relay_response(self, response: http.client.HTTPResponse) -> None:
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        bodiless = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
        if bodiless:
            self.end_headers()
        elif response.length is not None:  # Content-Length passed through above
            self.end_headers()
            while block := response.read(BLOCK):  # http.client stops at Content-Length
                self.wfile.write(block)
        elif response.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while block := response.read1(BLOCK):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            self.wfile.write(b"0\r\n\r\n")
        else:  # the body ends when the registry closes: so must ours
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            while block := response.read(BLOCK):
                self.wfile.write(block)
        response.close()
        if response.will_close:
            self._drop_upstream()

    def _refuse(self, status: int) -> None:
        code, message = REFUSALS[status]
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        extra = {}
        if status == 401:
            extra["WWW-Authenticate"] = f'Bearer realm="http://{host}/oauth2/token",service="{host}"'
        self._error(status, code, message, extra)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
        self.send_response_only(status)
        for name, value in {"Content-Type": "application/json; charset=utf-8", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        self.send_header("Content-Length", str(len(body)))
        # The request body (if any) was not read: the connection cannot carry another request.
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drop_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
        self._upstream = None

    def finish(self) -> None:
        self._drop_upstream()
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the replicator polls twice a second; only failures are logged


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.registry_front", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, help="host:port, the fleet file's registry endpoint")
    parser.add_argument("--backend", required=True, help="host:port of the region's docker-registry")
    parser.add_argument("--region", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    server = FrontServer(_hostport(args.listen), _hostport(args.backend), args.region, args.state_dir)
    log.info("registry front for %s on %s -> %s", args.region, args.listen, args.backend)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
