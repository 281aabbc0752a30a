"""A region's edge: where a user routed to that region lands. Asked as a user would ask it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class Probe:
    healthy: bool
    digest: str | None  # the digest the edge says it serves, None when it cannot say
    detail: str


@dataclass(frozen=True)
class Edge:
    url: str
    health_path: str = "/healthz"
    version_path: str = "/version"
    timeout: float = 5.0

    def probe(self) -> Probe:
        """Health, then the digest served; never raises: an edge that does not answer is unhealthy."""
        try:
            with urllib.request.urlopen(self.url + self.health_path, timeout=self.timeout) as response:
                healthy = response.status == 200
        except urllib.error.HTTPError as err:
            return Probe(False, None, f"{self.health_path} answered {err.code}")
        except (urllib.error.URLError, OSError) as err:
            return Probe(False, None, f"edge unreachable: {getattr(err, 'reason', err)}")
        try:
            with urllib.request.urlopen(self.url + self.version_path, timeout=self.timeout) as response:
                digest = json.loads(response.read()).get("digest")
        except (urllib.error.URLError, OSError, ValueError) as err:
            return Probe(healthy, None, f"{self.version_path} unusable: {getattr(err, 'reason', err)}")
        return Probe(healthy, digest, f"healthy={healthy} digest={digest}")
