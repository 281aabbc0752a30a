"""Registers Fanout with Airflow. The fanout package itself is imported, not walked (see .airflowignore).

The Fanout page (fanout.airflow.page_app) is Airflow 3's plugin model: a FastAPI app the api-server
mounts at /fanout, and an external view that shows it inside the UI (Browse → Fanout)."""

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

PREFIX = "/fanout"


class FanoutPage:
    """The page's ASGI app, built at its first request. Every task process loads the plugins (for
    their macros); the app's imports (FastAPI, Airflow's API security) would cost each one a second."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from fanout.airflow.page_app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class FanoutPlugin(AirflowPlugin):
    name = "fanout"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [{"app": FanoutPage(), "url_prefix": PREFIX, "name": "Fanout"}]
    # url_route: the UI frames `href` at /plugin/fanout, under its own navigation.
    external_views: ClassVar[list[dict[str, Any]]] = [
        {"name": "Fanout", "href": f"{PREFIX}/", "url_route": "fanout", "category": "browse"}
    ]
