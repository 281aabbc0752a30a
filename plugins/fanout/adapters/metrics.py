"""A Prometheus-compatible query API (a Prometheus server, or Azure Monitor managed Prometheus):
instant and range queries over HTTP, reduced to the numbers the metric gates judge."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Azure Monitor workspaces' query endpoints take an Entra token for this resource, per cloud.
AZURE_MONITOR_SCOPE = {
    "AzurePublicCloud": "https://prometheus.monitor.azure.com/.default",
    "AzureUSGovernment": "https://prometheus.monitor.azure.us/.default",
    "AzureChinaCloud": "https://prometheus.monitor.azure.cn/.default",
}


class MetricError(RuntimeError):
    pass


@dataclass
class PrometheusQuery:
    url: str
    # Returns a bearer token (Azure Monitor); None: no Authorization header (a plain Prometheus).
    token: Callable[[], str] | None = None
    verify: bool | str = True  # or a CA bundle (tests against a local TLS server)
    timeout: float = 10.0
    _session: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        import requests  # here, not at module level: every task's DAG-file parse imports this module

        self._session = requests.Session()
        # Queries go to the URL the fleet file names and only there: no proxy from the environment.
        self._session.trust_env = False

    def close(self) -> None:
        self._session.close()

    def _get(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        import requests

        url = f"{self.url.rstrip('/')}/api/v1/{path}"
        headers = {"Accept": "application/json"}
        try:
            if self.token is not None:
                headers["Authorization"] = f"Bearer {self.token()}"
            response = self._session.get(url, params=params, headers=headers, timeout=self.timeout, verify=self.verify)
            body = response.json() if response.content else {}
        except requests.RequestException as err:
            raise MetricError(f"{self.url}: {path} failed: {type(err).__name__}") from None
        except ValueError:
            body = {}
        if response.status_code != 200 or body.get("status") != "success":
            why = f"{body.get('errorType')}: {body.get('error')}" if body.get("error") else response.reason
            raise MetricError(f"{self.url}: {path} answered HTTP {response.status_code}: {why}")
        return list(body.get("data", {}).get("result") or [])

    def value(self, query: str, at: float) -> float | None:
        """The single value of an instant query at `at`; None if it has none (or it is NaN)."""
        result = self._get("query", {"query": query, "time": f"{at:.3f}"})
        if len(result) > 1:
            raise MetricError(f"expected one series, got {len(result)}: {query}")
        return _number(result[0]["value"][1]) if result else None

    def series(self, query: str, start: float, end: float, step: float) -> list[float]:
        """The values of a range query's single series; steps without a (finite) value left out."""
        params = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        result = self._get("query_range", params)
        if len(result) > 1:
            raise MetricError(f"expected one series, got {len(result)}: {query}")
        values = (_number(v) for _, v in result[0]["values"]) if result else ()
        return [v for v in values if v is not None]


def _number(text: str) -> float | None:
    value = float(text)
    return None if math.isnan(value) or math.isinf(value) else value
