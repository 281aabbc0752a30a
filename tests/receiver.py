"""A real HTTP receiver on loopback that records every notification it gets: what Apprise's `json://`
service posts ({"version", "title", "message", "type"}), as Slack or Teams would get theirs."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """`with Receiver() as r:` listens on 127.0.0.1 (a free port); `r.url` is its Apprise URL and
    `r.received` every JSON body posted to it, in order."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    owner.received.append(json.loads(body))
                except ValueError:
                    owner.received.append({"raw": body.decode(errors="replace")})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/notify"

    def connection(self) -> str:
        """The Airflow connection (AIRFLOW_CONN_<ID> JSON) whose Apprise config is this receiver."""
        return json.dumps({"conn_type": "apprise", "extra": {"config": {"path": self.url}}})

    def titles(self) -> list[str]:
        return [r.get("title", "") for r in self.received]

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
