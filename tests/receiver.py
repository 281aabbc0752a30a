"""Real HTTP servers on loopback for tests: `LoopbackHttp` answers each request with a status code
a test chooses; `Receiver` records every notification it gets: what Apprise's `json://` service
posts ({"version", "title", "message", "type"}), as Slack or Teams would get theirs."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LoopbackHttp:
    """A threaded HTTP server on 127.0.0.1 (a free port), serving until `close()`: every GET or POST
    is answered with the status `answer(method, path, body)` returns and an empty body."""

    def __init__(self, answer: Callable[[str, str, bytes], int]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(answer(self.command, self.path, body))
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Receiver:
    """`with Receiver() as r:` listens on 127.0.0.1 (a free port); `r.url` is its Apprise URL and
    `r.received` every JSON body posted to it, in order."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.http = LoopbackHttp(self._record)
        self.url = f"json://127.0.0.1:{self.http.port}/notify"

    def _record(self, method: str, path: str, body: bytes) -> int:
        try:
            self.received.append(json.loads(body))
        except ValueError:
            self.received.append({"raw": body.decode(errors="replace")})
        return 200

    def connection(self) -> str:
        """The Airflow connection (AIRFLOW_CONN_<ID> JSON) whose Apprise config is this receiver."""
        return json.dumps({"conn_type": "apprise", "extra": {"config": {"path": self.url}}})

    def titles(self) -> list[str]:
        return [r.get("title", "") for r in self.received]

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.http.close()
