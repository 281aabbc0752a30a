"""The Traffic Manager adapter's own checks: inputs refused before any call, transport rules,
and error messages that never carry a credential."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from fanout.adapters.traffic import (
    AzureTrafficManager,
    StaticTokenCredential,
    TrafficManagerError,
    check_base_url,
    validate_weight,
)

SUB = "00000000-0000-0000-0000-000000000000"
SECRET = "eyJhbGciOiJub25lIn0.eyJzZWNyZXQiOiJ5ZXMifQ.c2lnbmF0dXJl"  # looks like a real JWT


class CountingCredential:
    def __init__(self, token: str = SECRET):
        self.token, self.calls = token, 0

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        return AccessToken(self.token, int(time.time()) + 3600)


def adapter(base_url: str, credential: Any = None, **kwargs: Any) -> AzureTrafficManager:
    return AzureTrafficManager(credential or CountingCredential(), SUB, "rg", "prof", base_url=base_url, **kwargs)


@pytest.mark.parametrize("weight", [0, -1, 1001, True, 1.5, "10"])
def test_bad_weight_refused_before_any_call(weight: Any) -> None:
    cred = CountingCredential()
    # Nothing listens on port 9: a request would fail differently (and ask for a token first).
    tm = adapter("http://127.0.0.1:9", cred, retry_total=0)
    with pytest.raises(ValueError, match=r"weight for endpoint 'eastus'.*1\.\.1000"):
        tm.set_endpoint("eastus", enabled=True, weight=weight)
    assert cred.calls == 0


@pytest.mark.parametrize("weight", [None, 1, 1000])
def test_good_weights_pass(weight: int | None) -> None:
    validate_weight(weight, "eastus")


@pytest.mark.parametrize(
    "url", ["http://example.com", "http://10.0.0.1:7100", "http://management.azure.com", "ftp://127.0.0.1", "x"]
)
def test_plain_http_only_for_loopback(url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        check_base_url(url)
    with pytest.raises(ValueError, match="base_url"):
        adapter(url)


@pytest.mark.parametrize(
    ("url", "plain"),
    [
        (None, False),
        ("https://management.azure.com", False),
        ("http://127.0.0.1:7100", True),
        ("http://localhost:7100", True),
        ("http://[::1]:7100", True),
    ],
)
def test_allowed_base_urls(url: str | None, plain: bool) -> None:
    assert check_base_url(url) is plain


def test_unknown_endpoint_type_refused() -> None:
    with pytest.raises(ValueError, match=r"'eastus'.*ExternalEndpoints"):
        adapter("http://127.0.0.1:9", endpoint_types={"eastus": "Bogus"})


@pytest.fixture
def echo_server() -> Iterator[str]:
    """An ARM look-alike that fails every call and, carelessly, echoes the Authorization header."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _fail(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            auth = self.headers.get("Authorization", "")
            body = json.dumps({"error": {"code": "Boom", "message": f"cannot use {auth} (raw token {auth[7:]})"}})
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        do_GET = do_PATCH = _fail

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("credential", [CountingCredential(), StaticTokenCredential("plain-static-token-123")])
def test_error_names_profile_endpoint_cause_and_no_token(echo_server: str, credential: Any) -> None:
    token = credential.get_token().token
    tm = adapter(echo_server, credential, retry_total=0)
    with pytest.raises(TrafficManagerError) as err:
        tm.set_endpoint("eastus", enabled=False)
    message = str(err.value)
    assert "profile 'prof'" in message and "endpoint 'eastus'" in message and "disabling" in message
    assert "HTTP 500 Boom" in message
    assert token not in message and token not in repr(err.value)
    # The SDK error (which holds the request and its headers) is not chained on.
    assert err.value.__cause__ is None and err.value.__context__ is None
    assert (err.value.status_code, err.value.code, err.value.endpoint) == (500, "Boom", "eastus")


def test_unreachable_service_is_a_trafficmanager_error() -> None:
    tm = adapter("http://127.0.0.1:9", retry_total=0, timeout=2)
    with pytest.raises(TrafficManagerError, match="profile 'prof': reading the profile failed"):
        tm.endpoints()
