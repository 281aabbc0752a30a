"""The metric gates' Azure Monitor (managed Prometheus) source, against a contract server: the
query API's paths and parameters, the Entra token for the workspace's resource (never ARM's),
errors that say what failed without the token, and NaN samples left out."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fanout.adapters.azure_credentials import AzureAccess
from fanout.adapters.metrics import MetricError
from fanout.airflow.hooks import FleetHook
from fanout.fleet import parse_fleet
from tests.contract.azure_server import FakeCredential, Response

EXAMPLE = Path(__file__).resolve().parents[2] / "include" / "fleets" / "azure-example.yaml"
WORKSPACE = "amw-contoso-h2b3.westeurope.prometheus.monitor.azure.com"
SCOPE = "https://prometheus.monitor.azure.com/.default"
CHECK = {"name": "errors", "measure": "error_ratio", "max": 0.01}


def hook_for(ca: str, credential: FakeCredential) -> FleetHook:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["gates"]["metrics"] = {"source": {"kind": "azure-monitor", "url": f"https://{WORKSPACE}"}, "checks": [CHECK]}
    return FleetHook(parse_fleet(data, EXAMPLE), access=AzureAccess(credential), connection_verify=ca)


def vector(value: str) -> dict:
    return {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, value]}]}}


@pytest.fixture
def workspace(server, monkeypatch):
    server.resolve_to(monkeypatch, WORKSPACE)
    return server


def test_instant_and_range_queries_carry_the_workspace_token(workspace, ca, credential):
    token = FakeCredential.token_for(SCOPE)
    workspace.route("GET", r"/api/v1/query", Response(200, vector("0.25")), token=token)
    matrix = {"resultType": "matrix", "result": [{"metric": {}, "values": [[1, "3"], [3, "NaN"], [5, "4.5"]]}]}
    workspace.route("GET", r"/api/v1/query_range", Response(200, {"status": "success", "data": matrix}), token=token)
    hook = hook_for(ca, credential)
    source = hook.metrics
    assert source.value("sum(up)", 1700000000.5) == 0.25
    assert source.series("sum(up)", 1700000000, 1700000020, 2) == [3.0, 4.5], "NaN steps are left out"
    instant, ranged = workspace.calls("GET", "/api/v1/query")[0], workspace.calls("GET", "/api/v1/query_range")[0]
    assert instant.headers["host"] == WORKSPACE
    assert instant.query == {"query": "sum(up)", "time": "1700000000.500"}
    assert ranged.query == {"query": "sum(up)", "start": "1700000000.000", "end": "1700000020.000", "step": "2"}
    assert credential.scopes and set(credential.scopes) == {(SCOPE,)}, "only the workspace's resource, never ARM"
    assert hook.metrics is source, "one client per hook: the trigger asks at every poll"
    hook.close()
    workspace.assert_clean()


def test_a_refused_query_names_the_status_and_the_error_but_not_the_token(workspace, ca, credential):
    refusal = {"status": "error", "errorType": "Forbidden", "error": "caller lacks Monitoring Data Reader"}
    workspace.route("GET", r"/api/v1/query", Response(403, refusal))
    with pytest.raises(MetricError) as err:
        hook_for(ca, credential).metrics.value("sum(up)", 1)
    message = str(err.value)
    assert "HTTP 403" in message and "Monitoring Data Reader" in message
    assert FakeCredential.token_for(SCOPE) not in message


def test_a_credential_that_fails_is_a_metric_error_the_gate_retries(ca):
    class Broken(FakeCredential):
        def get_token(self, *scopes, **kwargs):
            raise RuntimeError("AADSTS7000215: Invalid client secret provided. client_secret=abc123")

    with pytest.raises(MetricError, match=r"no Entra token for https://prometheus\.monitor\.azure\.com") as err:
        hook_for(ca, Broken()).metrics.value("sum(up)", 1)
    assert "abc123" not in str(err.value)
