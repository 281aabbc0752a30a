"""A Prometheus-compatible query API: one instant query, its largest sample."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass


class MetricError(RuntimeError):
    pass


@dataclass(frozen=True)
class PrometheusQuery:
    url: str
    timeout: float = 10.0

    def max_value(self, query: str) -> float | None:
        """The largest sample of an instant query; None when it returns no samples."""
        url = f"{self.url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                result = json.loads(response.read())["data"]["result"]
            return max(float(sample["value"][1]) for sample in result) if result else None
        except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
            raise MetricError(f"metric query failed: {err}") from None
