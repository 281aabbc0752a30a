"""The Fanout page's FastAPI app behind Airflow's own security: an anonymous request is refused, a
user with a token the auth manager signed (the UI's cookie or a bearer header) is served. The auth
manager is Airflow's simple one; only Airflow's revoked-token lookup (a database read) and the
reads of Airflow and the fleet are stood in for."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fanout.airflow import page_app
from tests.fakes import LOCAL

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def auth_manager(monkeypatch):
    from airflow.api_fastapi import app as airflow_app
    from airflow.models.revoked_token import RevokedToken

    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "unit-test-secret-" * 4)
    monkeypatch.setenv("AIRFLOW__CORE__AUTH_MANAGER",
                       "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager")  # fmt: skip
    monkeypatch.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti, session=None: False))
    airflow_app.purge_cached_app()
    manager = airflow_app.create_auth_manager()
    yield manager
    airflow_app.purge_cached_app()


class Reads:
    """What the app would read from Airflow and the fleet, counted."""

    def __init__(self) -> None:
        self.live = 0
        self.users: list[str] = []

    def read_live(self, fleet):
        self.live += 1
        return {}

    def connect(self, user):
        self.users.append(user.get_name())
        raise page_app.TriggerError("not in a unit test", 3)


@pytest.fixture
def client(auth_manager):
    reads = Reads()
    sub = page_app.create_app(lambda: {"hello": LOCAL}, reads.read_live, reads.connect, lambda: NOW)
    root = FastAPI()
    root.mount(page_app.PREFIX, sub)
    return TestClient(root), reads


def token(auth_manager, role: str = "viewer") -> str:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return auth_manager.generate_jwt(SimpleAuthManagerUser(username="ann", role=role))


def test_an_anonymous_request_is_refused_on_every_route(client):
    http, reads = client
    for path in ("/fanout/", "/fanout/hello", "/fanout/hello/data", "/fanout/docs", "/fanout/openapi.json"):
        response = http.get(path, follow_redirects=False)
        assert response.status_code in (401, 404), (path, response.status_code)
    assert http.get("/fanout/hello/data").json() == {"detail": "Not authenticated"}
    assert http.get("/fanout/hello/data", headers={"Authorization": "Bearer forged"}).status_code == 403
    assert reads.live == 0 and reads.users == []


def test_the_plugin_mounts_the_protected_app(auth_manager):
    from fanout_plugin import FanoutPlugin

    mounted = FanoutPlugin.fastapi_apps[0]
    root = FastAPI()
    root.mount(mounted["url_prefix"], mounted["app"])
    assert TestClient(root).get("/fanout/hello/data").status_code == 401
    assert FanoutPlugin.external_views[0]["href"] == "/fanout/"


def test_a_signed_in_user_gets_the_page_and_its_data(client, auth_manager):
    http, reads = client
    bearer = {"Authorization": f"Bearer {token(auth_manager)}"}
    data = http.get("/fanout/hello/data", headers=bearer)
    assert data.status_code == 200, data.text
    doc = data.json()
    assert doc["app"] == "hello" and [r["region"] for r in doc["regions"]][:1] == ["eastus"]
    assert doc["problems"] == ["Airflow: not in a unit test"] and reads.users == ["ann"]
    # The UI's session is a cookie: the page and its polls are served on it alone.
    http.cookies.set("_token", token(auth_manager))
    html = http.get("/fanout/hello")
    assert html.status_code == 200 and 'DATA_URL = "/fanout/hello/data"' in html.text
    assert http.get("/fanout/", follow_redirects=False).headers["location"] == "/fanout/hello"
    assert http.get("/fanout/nowhere/data").status_code == 404
    # Two polls within a refresh read the fleet once.
    http.get("/fanout/hello/data")
    assert reads.live == 1


def test_viewers_refreshing_at_once_share_one_read_until_it_is_stale():
    import threading
    import time as clock

    now = [0.0]
    cache, reads = page_app.Cache(4.0, clock=lambda: now[0]), []

    def slow_read():
        reads.append(1)
        clock.sleep(0.2)  # every other viewer arrives while this read is under way
        return len(reads)

    viewers = [threading.Thread(target=cache.get, args=("fleet", slow_read)) for _ in range(8)]
    for viewer in viewers:
        viewer.start()
    for viewer in viewers:
        viewer.join()
    assert len(reads) == 1 and cache.get("fleet", slow_read) == 1
    now[0] = 4.0
    assert cache.get("fleet", slow_read) == 2 and cache.get("other", slow_read) == 3


def test_a_failed_live_read_is_a_problem_on_the_page_not_an_error(auth_manager):
    def no_connection(fleet):
        raise RuntimeError("connection 'azure_fanout' is not defined")

    sub = page_app.create_app(lambda: {"hello": LOCAL}, no_connection, Reads().connect, lambda: NOW)
    root = FastAPI()
    root.mount(page_app.PREFIX, sub)
    bearer = {"Authorization": f"Bearer {token(auth_manager)}"}
    doc = TestClient(root).get("/fanout/hello/data", headers=bearer).json()
    assert "live reads: connection 'azure_fanout' is not defined" in doc["problems"]
    assert doc["live"] is False and doc["regions"][0]["running"] is None
