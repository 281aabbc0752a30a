"""A git server on loopback: smart HTTP through Debian's `git http-backend` (a CGI program).

Why smart HTTP and not `git daemon`: releases fetch from HTTPS hosts (GitHub, Azure DevOps)
with a credential, and only HTTP carries one. So the release's git adapter speaks the same
protocol (v2, fetch of one commit by id, partial fetches) and sends its credential the same way
(`Authorization: Basic`) to this server as to production. With `--credentials FILE` (a line
`user:password`) every request must authenticate, as a private repository demands.

    python -m localfleet.git.server --root DIR --port N [--credentials FILE]
"""

from __future__ import annotations

import argparse
import base64
import hmac
import os
import subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

BACKEND = "/usr/lib/git-core/git-http-backend"


class GitHandler(BaseHTTPRequestHandler):
    server_version = "fanout-localgit/1"
    root: Path
    expected_auth: str | None = None

    def do_GET(self) -> None:
        self._serve(b"")

    def do_POST(self) -> None:
        self._serve(self._body())

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return out
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorized(self) -> bool:
        if self.expected_auth is None:
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), self.expected_auth.encode())

    def _serve(self, body: bytes) -> None:
        if not self._authorized():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="fanout local git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        url = urlsplit(self.path)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": url.path,
            "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_USER": "fanout" if self.expected_auth else "",
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        done = subprocess.run([BACKEND], input=body, env=env, capture_output=True, timeout=300)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers.append((key, value.strip()))
        if done.returncode != 0 and not head:
            status, payload = 500, done.stderr
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def serve(root: Path, port: int, credentials: str | None = None) -> None:
    handler = type("Handler", (GitHandler,), {"root": root})
    if credentials:
        handler.expected_auth = "Basic " + base64.b64encode(credentials.encode()).decode()
    with ThreadingHTTPServer(("127.0.0.1", port), handler) as httpd:
        httpd.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m localfleet.git.server", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="folder holding the bare repositories")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--credentials", type=Path, help="file with one line user:password; then auth is required")
    args = parser.parse_args(argv)
    creds = args.credentials.read_text().strip() if args.credentials else None
    serve(args.root, args.port, creds)


if __name__ == "__main__":
    main()
