"""A local HTTPS server that answers like an Azure API and checks each request against the
contract Azure documents: method, path, api-version, Authorization, headers and body.

Tests register routes (method + path regex + expected api-version + which bearer token is
valid) with a handler, and can queue faults in front of a route (any status with headers,
or a delay longer than the client's timeout). A request that breaks the contract is answered
the way ARM would (400/401) and recorded in `problems`; every test ends with `assert_clean()`.
Loopback only; TLS with a throwaway self-signed certificate the clients are told to trust.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import re
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from azure.core.credentials import AccessToken

ARM_SCOPE = "https://management.azure.com/.default"
ACR_SCOPE = "https://containerregistry.azure.net/.default"
AKS_SCOPE = "6dae42f8-4368-4678-94ff-3960e28e3630/.default"


# Registry hosts the server also answers for (`resolve_to`): the certificate names them, so a client
# asking a regional host checks TLS against that name, as it would against ACR.
ACR_TEST_NAMES = ("*.azurecr.io", "*.westeurope.geo.azurecr.io", "*.eastus2.geo.azurecr.io")
# An Azure Monitor workspace's query endpoint (managed Prometheus).
AMW_TEST_NAMES = ("*.westeurope.prometheus.monitor.azure.com",)


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost, ACR_TEST_NAMES and AMW_TEST_NAMES: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fanout contract tests")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), *map(x509.DNSName, ACR_TEST_NAMES + AMW_TEST_NAMES)]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(names),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


class FakeCredential:
    """An azure-identity stand-in: one distinct token per scope, every request recorded."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    @staticmethod
    def token_for(scope: str) -> str:
        return "tok-" + re.sub(r"[^a-z0-9]+", "-", scope.lower()).strip("-")

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token_for(scopes[0]), int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        from azure.core.credentials import AccessTokenInfo

        self.scopes.append(scopes)
        return AccessTokenInfo(self.token_for(scopes[0]), int(time.time()) + 3600)


def jwt_like(claims: dict[str, Any]) -> str:
    """An unsigned JWT: ACR refresh tokens are JWTs and the SDK reads their `exp`."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.sig"


@dataclass
class Request:
    method: str
    path: str  # percent-decoded, without the query
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}


@dataclass
class Response:
    status: int = 200
    body: Any = None  # dict/list → JSON; bytes as they are
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Handler = Callable[[Request, re.Match[str]], Response]


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    api_version: str | None
    token: str | None  # the bearer token that must be sent; None: no Authorization expected
    challenge: str | None  # WWW-Authenticate to answer a request without Authorization
    faults: deque[Response] = field(default_factory=deque)
    calls: int = 0


class ContractServer:
    def __init__(self, cert: Path, key: Path) -> None:
        self.routes: list[Route] = []
        self.seen: list[Request] = []
        self.problems: list[str] = []
        self._lock = threading.Lock()
        server = self
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(
                    self.command,
                    unquote(parts.path),
                    parts.path,
                    {k: v[0] for k, v in parse_qs(parts.query).items()},
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                response = server.answer(request)
                if response.delay:
                    time.sleep(response.delay)
                payload = response.body
                if isinstance(payload, (dict, list)):
                    payload = json.dumps(payload).encode()
                    response.headers.setdefault("Content-Type", "application/json")
                payload = payload or b""
                try:
                    self.send_response(response.status)
                    for name, value in response.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass  # the client gave up (timeout tests)

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = _serve

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- set-up ------------------------------------------------------------------------------
    def route(
        self,
        method: str,
        pattern: str,
        handler: Handler | Response,
        *,
        api_version: str | None = None,
        token: str | None = None,
        challenge: str | None = None,
    ) -> Route:
        fn = handler if callable(handler) else (lambda req, m, r=handler: Response(r.status, r.body, dict(r.headers)))
        route = Route(method, re.compile(pattern), fn, api_version, token, challenge)
        self.routes.insert(0, route)  # the latest registration wins, so a test can override a default
        return route

    def fail_next(self, method: str, pattern: str, *responses: Response) -> None:
        """Answer the next requests matching (method, pattern) with `responses`, in order."""
        for route in self.routes:
            if route.method == method and route.pattern.pattern == pattern:
                route.faults.extend(responses)
                return
        raise KeyError(f"no route {method} {pattern}")

    def resolve_to(self, monkeypatch: Any, *hosts: str) -> None:
        """Connections to `hosts` (port 443) reach this server, as if DNS said so: the request keeps
        its Host header and TLS name, so a test sees which host a client asked."""
        import urllib3.util.connection as connection

        real, port = connection.create_connection, self._httpd.server_address[1]

        def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
            if address[0] in hosts and address[1] == 443:
                address = ("127.0.0.1", port)
            return real(address, *args, **kwargs)

        monkeypatch.setattr(connection, "create_connection", create_connection)

    def calls(self, method: str, path_regex: str) -> list[Request]:
        return [r for r in self.seen if r.method == method and re.fullmatch(path_regex, r.path)]

    def assert_clean(self) -> None:
        assert not self.problems, "contract violations:\n" + "\n".join(self.problems)

    # -- answering -------------------------------------------------------------------------------
    def _problem(self, text: str) -> None:
        with self._lock:
            self.problems.append(text)

    def answer(self, req: Request) -> Response:
        with self._lock:
            self.seen.append(req)
        for route in self.routes:
            match = route.pattern.fullmatch(req.path)
            if match and route.method == req.method:
                break
        else:
            self._problem(f"{req.method} {req.path}: no such operation")
            return arm_error(404, "InvalidResourceType", f"no operation {req.method} {req.path}")
        route.calls += 1
        if route.api_version is not None and req.query.get("api-version") != route.api_version:
            self._problem(f"{req.method} {req.path}: api-version {req.query.get('api-version')!r}, "
                          f"expected {route.api_version!r}")  # fmt: skip
            code = "MissingApiVersionParameter" if "api-version" not in req.query else "InvalidApiVersionParameter"
            return arm_error(400, code, "The api-version query parameter is missing or not supported.")
        auth = req.headers.get("authorization")
        if route.token is not None:
            if auth is None and route.challenge is not None:
                return Response(401, {"errors": [{"code": "UNAUTHORIZED"}]}, {"WWW-Authenticate": route.challenge})
            if auth != f"Bearer {route.token}":
                self._problem(f"{req.method} {req.path}: Authorization {auth!r}, expected Bearer {route.token}")
                return arm_error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        if route.faults:
            return route.faults.popleft()
        try:
            return route.handler(req, match)
        except AssertionError as err:
            self._problem(f"{req.method} {req.path}: {err}")
            return arm_error(400, "InvalidRequestContent", str(err))


def arm_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error the way ARM sends it: {"error": {"code", "message"}}."""
    return Response(status, {"error": {"code": code, "message": message}}, dict(headers or {}))
