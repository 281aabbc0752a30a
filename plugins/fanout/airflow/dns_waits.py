"""The release respects DNS: waits around a drain and a restore (deferrable, time spent logged).

- `DnsSettleOperator` (after drain): resolvers may hold the old answer for the TTL the live
  profile reports (the fleet file's `dns_ttl_seconds` only as a floor), so wait that long.
- `ConfirmDrainedOperator` (then): ask the region's edge (`gates.http.traffic_path`) until no
  user request has arrived for QUIET_SECONDS; if users keep arriving (a resolver that ignores the
  TTL) fail before Helm starts, so nothing is deployed to a region users still reach.
- `WaitOnlineOperator` (after restore): until Traffic Manager's monitor reports the endpoint
  Online, so the next wave never drains while this region is not yet back in the answers.

The computations are pure (`fanout.routing`); these classes only wire them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

from airflow.sdk import Context

from fanout.airflow.operators import FanoutOperator
from fanout.airflow.triggers import PollingTrigger
from fanout.routing import settle_seconds

# Test-only: the negative control turns the DNS waits off to prove the recorder sees the difference.
SKIP_ENV = "FANOUT_TEST_SKIP_DNS_WAITS"
QUIET_SECONDS = 2.0


def _skipped(op: FanoutOperator) -> bool:
    if os.environ.get(SKIP_ENV) == "1":
        op.log.warning("%s=1: DNS wait skipped — users may reach %s mid-change (test only)", SKIP_ENV, op.region)
        return True
    return False


def _drained_now(context: Context, region: str) -> bool:
    drained = context["ti"].xcom_pull(task_ids=f"deploy_{region}.drain") or {}
    return bool(drained.get("was_enabled"))


class DnsSettleOperator(FanoutOperator):
    """Wait until no resolver may still hold the answer that named this region."""

    def run(self, context: Context) -> dict[str, Any]:
        if not _drained_now(context, self.region) or _skipped(self):
            return {"waited": 0}
        profile = self.hook.traffic_manager().profile_status()
        seconds = settle_seconds(profile.dns_ttl, self.fleet.traffic_manager.dns_ttl_seconds)
        self.log.info(
            "%s drained: waiting %s s for resolvers to drop it (profile TTL %s, fleet floor %s)",
            self.region, seconds, profile.dns_ttl, self.fleet.traffic_manager.dns_ttl_seconds,
        )  # fmt: skip
        context["ti"].xcom_push(key="started", value=time.time())
        return self.pause(seconds, "settled", context)

    def settled(self, context: Context, event: Any = None) -> dict[str, Any]:
        started = context["ti"].xcom_pull(task_ids=self.task_id, key="started") or time.time()
        waited = round(time.time() - started, 1)
        self.log.info("%s: DNS settled after %.1f s", self.region, waited)
        return {"waited": waited}


def edge_traffic(url: str, timeout: float = 3.0) -> dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # edges are the region's own hosts
    with opener.open(url, timeout=timeout) as resp:
        return json.loads(resp.read())


class EdgeQuietTrigger(PollingTrigger):
    """Until the edge has had no user request for `quiet_seconds`."""

    def __init__(self, *, url: str, quiet_seconds: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.url, self.quiet_seconds = url, quiet_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{__name__}.EdgeQuietTrigger", {"url": self.url, "quiet_seconds": self.quiet_seconds, **self._kwargs()}

    async def check(self) -> tuple[bool, str]:
        try:
            seen = await asyncio.to_thread(edge_traffic, self.url)
        except (urllib.error.URLError, OSError, ValueError) as err:
            return False, f"edge traffic unreadable: {getattr(err, 'reason', err)}"
        if seen.get("last_at") is None:
            return True, "no user request ever reached it"
        quiet = seen["now"] - seen["last_at"]
        return quiet >= self.quiet_seconds, f"last user request {quiet:.1f} s ago ({seen.get('requests')} in all)"


class ConfirmDrainedOperator(FanoutOperator):
    """Confirm from the region's edge that user requests stopped arriving before Helm starts."""

    def run(self, context: Context) -> dict[str, Any]:
        # Asked even when this try's drain found the endpoint disabled already: an earlier try may have
        # drained it a moment ago, and an edge nobody reaches answers at once anyway.
        path = self.fleet.gates.http.traffic_path
        if _skipped(self):
            return {"confirmed": False}
        if path is None:
            self.log.info(
                "gates.http.traffic_path is not set: the drain of %s is not confirmed from its edge", self.region
            )
            return {"confirmed": False}
        ttl = self.fleet.traffic_manager.dns_ttl_seconds
        trigger = EdgeQuietTrigger(
            url=self.fleet.region(self.region).edge_url.rstrip("/") + path,
            quiet_seconds=QUIET_SECONDS,
            timeout_seconds=max(30, 3 * ttl),
            poll_seconds=0.5,
        )
        return self.wait(context, trigger, "confirmed")

    def confirmed(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        if event["status"] != "ok":
            self.fail(
                context,
                f"users still reach {self.region} {event['waited']:.0f} s after its drain and the DNS TTL "
                f"({event['detail']}): a resolver holds the old answer; nothing was deployed",
            )
        self.log.info("%s: no user traffic (%s); confirmed after %.1f s", self.region, event["detail"], event["waited"])
        return {"confirmed": True, "waited": event["waited"]}


class MonitorOnlineTrigger(PollingTrigger):
    """Until Traffic Manager's monitor reports the region's endpoint Online (read in the triggerer)."""

    def __init__(self, *, fleet_path: str, endpoint: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.fleet_path, self.endpoint = fleet_path, endpoint

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{__name__}.MonitorOnlineTrigger",
            {"fleet_path": self.fleet_path, "endpoint": self.endpoint, **self._kwargs()},
        )

    def _status(self) -> str | None:
        from fanout.airflow.hooks import FleetHook
        from fanout.airflow.operators import fleet_at

        tm = FleetHook(fleet_at(self.fleet_path)).traffic_manager()
        try:
            return tm.endpoints()[self.endpoint].monitor_status
        finally:
            close = getattr(tm, "close", None)
            if close:
                close()

    async def check(self) -> tuple[bool, str]:
        status = await asyncio.to_thread(self._status)
        return status == "Online", f"endpoint {self.endpoint} monitor status {status}"


class WaitOnlineOperator(FanoutOperator):
    """After restore: until the monitor sees the endpoint Online, before the next wave drains."""

    def run(self, context: Context) -> dict[str, Any]:
        restored = context["ti"].xcom_pull(task_ids=f"deploy_{self.region}.restore") or {}
        if not restored.get("enabled"):
            self.log.info("%s was not enabled by restore: no monitor status to wait for", self.region)
            return {"waited": 0}
        trigger = MonitorOnlineTrigger(
            fleet_path=self.fleet_path, endpoint=self.endpoint_name(), timeout_seconds=300, poll_seconds=1.0
        )
        return self.wait(context, trigger, "online")

    def online(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        if event["status"] != "ok":
            self.fail(context, f"Traffic Manager never reported it Online: {event['detail']}")
        self.log.info("%s is Online in Traffic Manager after %.1f s", self.region, event["waited"])
        return {"waited": event["waited"]}
