"""Entra ID's stand-in for the local clusters: short-lived bearer tokens the API servers check.

AKS with Entra ID takes an access token that expires (about an hour) and checks it on every
request. The local fleet does the same, only sooner (`local.token_lifetime_seconds`, minutes):

    POST /token          client credentials (`client_id`, `client_secret`, form-encoded) → an
                         Entra-shaped answer {access_token, token_type, expires_in, expires_on}
    POST /authenticate   the API servers' token webhook (`--authentication-token-webhook-config-file`):
                         a TokenReview, answered authenticated only while the token has not expired

Fault knob: `token_lifetime` (seconds) in faults.json shortens the tokens minted while it is set.

Tokens are `lft1.<expiry>.<user>.<hmac>`, signed with a key kept in the state folder, so the service
keeps no table and a restart keeps every token valid until it expires. Why a webhook and not the
TokenRequest API: kube-apiserver refuses a TokenRequest shorter than 10 minutes
(k8s.io/kubernetes pkg/apis/authentication/validation MinTokenAgeSec), too long for a test to see
a token expire under a running Helm.

`python -m localfleet.tokens credential --url U --secret-file F` is a client-go exec credential
plugin (ExecCredential v1): kubectl and Helm can use the fleet's kubeconfig as it is, and Fanout
runs the same command to get a token with its expiry (fanout.adapters.kube_exec).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import secrets
import sys
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit
from urllib.request import Request, urlopen

from localfleet import faults, procs
from localfleet.http_body import content_length

PROC = "tokens"
# The one identity Fanout uses on every local cluster; the RoleBinding names it (on AKS: the object ID).
CLIENT_ID = "fanout"
USERNAME = "fanout"
GROUPS = ("fanout:deployers",)


def token_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "tokens"


def secret_file(state_dir: Path) -> Path:
    return token_dir(state_dir) / "client.secret"


def ensure_secrets(state_dir: Path) -> None:
    """The signing key and Fanout's client secret, made once and kept across restarts (0600)."""
    folder = token_dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("signing.key", "client.secret"):
        path = folder / name
        if not path.exists():
            path.touch(0o600)
            path.write_text(secrets.token_hex(32))


def _sign(key: bytes, body: str) -> str:
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def mint(key: bytes, user: str, lifetime: float, now: float | None = None) -> tuple[str, int]:
    expires = int((now or time.time()) + lifetime)
    body = f"lft1.{expires}.{user}"
    return f"{body}.{_sign(key, body)}", expires


def verify(key: bytes, token: str, now: float | None = None) -> tuple[str | None, str]:
    """(user, why not) — user None when the token is forged, malformed or expired."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != "lft1" or not parts[1].isdigit():
        return None, "not a local fleet token"
    if not hmac.compare_digest(_sign(key, ".".join(parts[:3])), parts[3]):
        return None, "bad signature"
    if int(parts[1]) <= (now or time.time()):
        return None, "token expired"
    return parts[2], ""


MAX_BODY = 64 * 1024  # a token form or a TokenReview is well under a kilobyte


class TokenServer(ThreadingHTTPServer):
    daemon_threads = True
    key: bytes
    client_secret: str
    lifetime: float
    state_dir: Path

    def current_lifetime(self) -> float:
        """The fleet's lifetime, unless the `token_lifetime` fault knob says otherwise for now."""
        return float(faults.read_faults(self.state_dir).get("token_lifetime") or self.lifetime)


class Handler(BaseHTTPRequestHandler):
    server: TokenServer

    def log_message(self, *args: object) -> None:  # tokens must not reach a log
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length, status = content_length(self.headers, MAX_BODY)
        if length is None:
            self.close_connection = True  # the unread body must not be taken for the next request
            self._reply(status, {"error": "invalid_request", "error_description": "bad Content-Length"})
            return
        raw = self.rfile.read(length).decode(errors="replace")
        path = urlsplit(self.path).path  # the API server adds ?timeout=…
        if path == "/token":
            form = dict(parse_qsl(raw))
            ok = form.get("client_id") == CLIENT_ID and hmac.compare_digest(
                form.get("client_secret", ""), self.server.client_secret
            )
            if not ok:
                self._reply(401, {"error": "invalid_client"})
                return
            lifetime = self.server.current_lifetime()
            token, expires = mint(self.server.key, USERNAME, lifetime)
            self._reply(
                200,
                {"access_token": token, "token_type": "Bearer", "expires_in": int(lifetime), "expires_on": expires},
            )
        elif path == "/authenticate":
            try:
                review = json.loads(raw)
                token = review["spec"]["token"]
            except (ValueError, KeyError, TypeError):
                self._reply(400, {"error": "not a TokenReview"})
                return
            user, why = verify(self.server.key, token)
            status: dict = {"authenticated": user is not None}
            if user:
                status["user"] = {"username": user, "groups": list(GROUPS)}
            else:
                status["error"] = why
            self._reply(200, {"apiVersion": review.get("apiVersion"), "kind": "TokenReview", "status": status})
        else:
            self._reply(404, {"error": "not found"})


def serve(state_dir: Path, port: int, lifetime: float) -> None:
    ensure_secrets(state_dir)
    server = TokenServer(("127.0.0.1", port), Handler)
    server.key = (token_dir(state_dir) / "signing.key").read_bytes()
    server.client_secret = secret_file(state_dir).read_text()
    server.lifetime = lifetime
    server.state_dir = Path(state_dir)
    server.serve_forever()


def start(state_dir: Path, port: int, lifetime: float, pythonpath: str) -> int:
    ensure_secrets(state_dir)
    argv = [sys.executable, "-m", "localfleet.tokens", "serve", "--state-dir", str(state_dir)]
    argv += ["--port", str(port), "--lifetime", str(lifetime)]
    return procs.start(
        PROC, argv, state_dir, env={"PYTHONPATH": pythonpath}, ready=lambda: procs.port_open("127.0.0.1", port)
    )


def stop(state_dir: Path) -> bool:
    return procs.stop(PROC, state_dir)


def exec_user(url: str, state_dir: Path, pythonpath: str) -> dict:
    """A kubeconfig `user` that gets its token from this service (client-go exec plugin, v1)."""
    return {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [
                "-m",
                "localfleet.tokens",
                "credential",
                "--url",
                url,
                "--secret-file",
                str(secret_file(state_dir)),
            ],
            "env": [{"name": "PYTHONPATH", "value": pythonpath}],
            "interactiveMode": "Never",
            "provideClusterInfo": False,
        }
    }


def credential(url: str, secret: Path) -> dict:
    """An ExecCredential with a new token and its expiry, as client-go expects on stdout."""
    form = f"grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={secret.read_text().strip()}"
    request = Request(f"{url}/token", data=form.encode(), method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    expiry = datetime.fromtimestamp(answer["expires_on"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": answer["access_token"], "expirationTimestamp": expiry},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.tokens", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve")
    srv.add_argument("--state-dir", type=Path, required=True)
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--lifetime", type=float, required=True)
    cred = sub.add_parser("credential", help="client-go exec plugin: print an ExecCredential")
    cred.add_argument("--url", required=True)
    cred.add_argument("--secret-file", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.state_dir, args.port, args.lifetime)
        return 0
    try:
        print(json.dumps(credential(args.url, args.secret_file)))
    except (OSError, ValueError, KeyError) as err:
        print(f"localfleet token service at {args.url}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
