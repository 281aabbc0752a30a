"""Azure Traffic Manager stand-in: the ARM REST paths that azure-mgmt-trafficmanager 2.0.0 sends.

The production adapter (`fanout.adapters.traffic`) runs unchanged against it, so the release
DAG drains and restores real HTTP resources locally. Implemented, under
``/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/trafficmanagerprofiles/{profile}``
(fixed segments match case-insensitively, as in Azure; ``?api-version=2026-09-01``)::

    GET                         the profile, with its endpoints and monitor status
                                (also each child profile of a NestedEndpoints endpoint, by its name)
    GET|PUT|PATCH|DELETE  /{ExternalEndpoints|AzureEndpoints|NestedEndpoints}/{name}
    GET /_fanout/state          debug: the profile JSON and the pending faults (no auth)

With `traffic_manager.dns_port` it also answers the profile's DNS name there, UDP and TCP
(`localfleet.traffic.dns`), from the same live state.

Endpoint health is real: every enabled endpoint's edge is probed (``GET <edge_url>/healthz``).
Fault knob: ``<state_dir>/faults.json`` ``{"tm_errors": {"status": 429, "remaining": 3}}``
makes the next 3 ARM requests fail with that status; see `inject_errors`.

Usage::

    python -m localfleet.trafficmanager --fleet include/fleets/local.yaml --state-dir D
    python -m localfleet.trafficmanager --state-dir D --inject-errors 429 3
    python -m localfleet.trafficmanager --state-dir D --clear-errors
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

from fanout.fleet import Fleet, load_fleet
from localfleet import faults
from localfleet.http_body import content_length
from localfleet.tm_store import ENDPOINT_KINDS, ArmError, Store, seed_state

API_VERSIONS = ("2022-04-01", "2026-09-01")
MAX_BODY = 1024 * 1024  # an endpoint PATCH is a few hundred bytes
_PREFIX = ("subscriptions", None, "resourcegroups", None, "providers", "microsoft.network", "trafficmanagerprofiles")


# ---- fault knob -----------------------------------------------------------------------------------


def inject_errors(state_dir: str | Path, status: int, count: int) -> None:
    """Make the stand-in answer the next `count` ARM requests with `status` (429 adds Retry-After: 1)."""
    if not 400 <= status <= 599 or count < 0:
        raise ValueError(f"status must be an HTTP error (e.g. 429 or 500) and count >= 0, got {status}, {count}")
    with faults.edit(state_dir) as data:
        data["tm_errors"] = {"status": status, "remaining": count}


def clear_errors(state_dir: str | Path) -> None:
    """Forget any injected Traffic Manager errors."""
    with faults.edit(state_dir) as data:
        data.pop("tm_errors", None)


def _take_error(state_dir: Path) -> int | None:
    if not faults.faults_path(state_dir).exists():
        return None
    with faults.edit(state_dir) as data:
        fault = data.get("tm_errors") or {}
        if int(fault.get("remaining", 0)) <= 0:
            return None
        fault["remaining"] = int(fault["remaining"]) - 1
        return int(fault.get("status", 500))


# ---- HTTP ---------------------------------------------------------------------------------------


class StandInServer(ThreadingHTTPServer):
    daemon_threads = True
    store: Store
    state_dir: Path
    verbose: bool = False
    dns: ClassVar[list[Any]] = []

    def shutdown(self) -> None:
        self._stop_side()
        super().shutdown()

    def server_close(self) -> None:
        self._stop_side()
        super().server_close()

    def _stop_side(self) -> None:
        self.store.stop_monitor()
        for server in self.dns:
            if server.isAlive():
                server.stop()
        self.dns = []


class _Handler(BaseHTTPRequestHandler):
    server: StandInServer
    # The SDK (requests) keeps connections alive; every answer carries Content-Length.
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: ArmError, headers: dict[str, str] | None = None) -> None:
        self._send(err.status, err.body(), headers)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _body(self) -> bytes | None:
        """The request body, or None after answering 400/413: a Content-Length that is not a number
        from 0 to MAX_BODY would block the handler (negative) or exhaust memory (huge)."""
        length, status = content_length(self.headers, MAX_BODY)
        if length is not None:
            return self.rfile.read(length)
        self.close_connection = True  # the unread body must not be taken for the next request
        text = (self.headers.get("Content-Length") or "").strip()
        if status == 400:
            self._error(ArmError(400, "InvalidRequestContent", f"Content-Length {text[:20]!r} is not a length."))
        else:
            self._error(ArmError(413, "RequestEntityTooLarge", f"The request body is larger than {MAX_BODY} bytes."))
        return None

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        raw = self._body()
        if raw is None:
            return
        if url.path == "/_fanout/state" and method == "GET":
            pending = dict(faults.read_faults(self.server.state_dir).get("tm_errors") or {})
            store = self.server.store
            children = [store.profile_json(k) for k in store.state.get("children", {})]
            return self._send(200, {"profile": store.profile_json(), "children": children, "tm_errors": pending})
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            why = "missing" if not auth else "not a bearer token"
            return self._error(
                ArmError(401, "AuthenticationFailed", f"Authentication failed. The 'Authorization' header is {why}."),
                {
                    "WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/common", '
                    f'error="invalid_token", error_description="The Authorization header is {why}."'
                },
            )
        query = {k.lower(): v for k, v in parse_qsl(url.query)}
        version = query.get("api-version")
        if not version:
            msg = "The api-version query parameter (?api-version=) is required for all requests."
            return self._error(ArmError(400, "MissingApiVersionParameter", msg))
        if version not in API_VERSIONS:
            msg = (
                f"No registered resource provider found for API version '{version}' and type "
                f"'trafficManagerProfiles'. The supported api-versions are '{', '.join(API_VERSIONS)}'."
            )
            return self._error(ArmError(400, "NoRegisteredProviderFound", msg))
        status = _take_error(self.server.state_dir)
        if status is not None:
            code = "TooManyRequests" if status == 429 else "InternalServerError"
            headers = {"Retry-After": "1"} if status == 429 else None
            return self._error(ArmError(status, code, f"Injected fault: HTTP {status}."), headers)
        try:
            self._route(method, url.path, raw)
        except ArmError as err:
            self._error(err)

    def _route(self, method: str, path: str, raw: bytes) -> None:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        fixed_ok = len(parts) in (8, 10) and all(
            want is None or got.lower() == want for want, got in zip(_PREFIX, parts, strict=False)
        )
        kind = ENDPOINT_KINDS.get(parts[8].lower()) if fixed_ok and len(parts) == 10 else None
        if not fixed_ok or (len(parts) == 10 and kind is None):
            raise ArmError(404, "InvalidResourceType", f"The resource path '{path}' is not served by this stand-in.")
        store = self.server.store
        pkey = store.check_scope(parts[1], parts[3], parts[7])
        if len(parts) == 8:
            if method != "GET":
                raise ArmError(405, "MethodNotAllowed", f"{method} on a profile is not supported by this stand-in.")
            return self._send(200, store.profile_json(pkey))
        assert kind is not None
        name = parts[9]
        if method == "GET":
            return self._send(200, store.get_endpoint(kind, name, pkey))
        if method == "DELETE":
            existed = store.delete_endpoint(kind, name, pkey)
            return self._send(200, {"boolean": True}) if existed else self._send(204)
        try:
            body = json.loads(raw or b"{}")
        except ValueError as err:
            raise ArmError(400, "InvalidRequestContent", f"The request content was invalid JSON: {err}") from None
        if not isinstance(body, dict) or not isinstance(body.get("properties", {}), dict):
            raise ArmError(400, "InvalidRequestContent", "The request content must be an object with 'properties'.")
        if method == "PATCH":
            return self._send(200, store.patch_endpoint(kind, name, body, pkey))
        endpoint, created = store.put_endpoint(kind, name, body, pkey)
        return self._send(201 if created else 200, endpoint)


def serve(
    fleet: Fleet | str | Path,
    state_dir: str | Path,
    port: int | None = None,
    *,
    probe_interval: float = 2.0,
    verbose: bool = False,
) -> tuple[StandInServer, threading.Thread]:
    """Start the stand-in on 127.0.0.1 in a background thread.

    `port` None takes the port of the fleet's `traffic_manager.base_url`; 0 picks a free one
    (read it from ``server.server_address[1]``). Stop with ``server.shutdown(); server.server_close()``.
    """
    if not isinstance(fleet, Fleet):
        fleet = load_fleet(fleet)
    if port is None:
        base = urlsplit(fleet.traffic_manager.base_url or "")
        if base.port is None:
            raise ValueError("traffic_manager.base_url has no port; pass port explicitly")
        port = base.port
    state_dir = Path(state_dir)
    store = Store(state_dir, seed_state(fleet), probe_interval=probe_interval)
    server = StandInServer(("127.0.0.1", port), _Handler)
    server.store, server.state_dir, server.verbose = store, state_dir, verbose
    store.start_monitor()
    if fleet.traffic_manager.dns_port:
        from localfleet.traffic.dns import serve_dns

        server.dns = serve_dns(fleet, store.dns_view, "127.0.0.1", fleet.traffic_manager.dns_port)
    # A short poll keeps shutdown() quick; tests start and stop the stand-in many times.
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="tm-standin", daemon=True)
    thread.start()
    return server, thread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.trafficmanager", description=__doc__.split("\n")[0])
    parser.add_argument("--fleet", help="fleet file (required to serve)")
    parser.add_argument("--state-dir", required=True, help="where the state file and faults.json live")
    parser.add_argument("--port", type=int, help="default: the port of traffic_manager.base_url")
    parser.add_argument("--probe-interval", type=float, default=2.0, help="seconds between edge health probes")
    parser.add_argument("--inject-errors", nargs=2, type=int, metavar=("STATUS", "COUNT"))
    parser.add_argument("--clear-errors", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    if args.inject_errors:
        inject_errors(args.state_dir, *args.inject_errors)
        return 0
    if args.clear_errors:
        clear_errors(args.state_dir)
        return 0
    if not args.fleet:
        parser.error("--fleet is required to serve")
    server, thread = serve(
        args.fleet, args.state_dir, args.port, probe_interval=args.probe_interval, verbose=args.verbose
    )
    # procs.stop sends SIGTERM: turn it into a clean shutdown so the state file is never half-written.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    host, port = server.server_address[:2]
    print(f"traffic manager stand-in on http://{host}:{port} (state in {args.state_dir})", flush=True)
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
