"""The release respects DNS: after a drain, one deferrable wait (time spent logged).

`DnsSettleOperator` (after drain): resolvers may hold the old answer for the TTL the live profile
reports (the fleet file's `dns_ttl_seconds` only as a floor), so wait that long; then ask the
region's edge (`gates.http.traffic_path`) until no user request has arrived for QUIET_SECONDS. If
users keep arriving (a resolver that ignores the TTL) fail before Helm starts (`confirm_drained`),
so nothing is deployed to a region users still reach. Both halves are one trigger: one task
boundary, one trigger pickup.

After the change `restore` waits until the monitor reports the endpoint Online, so the next wave
never drains while this region is not yet back in the answers (region_steps.RestoreRegionOperator).

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

from fanout import names
from fanout.airflow.region_steps import _RegionWait
from fanout.airflow.triggers import PollingTrigger
from fanout.records import DrainOutcome
from fanout.routing import settle_seconds

# Test-only: the negative control turns the DNS waits off to prove the recorder sees the difference.
SKIP_ENV = "FANOUT_TEST_SKIP_DNS_WAITS"
QUIET_SECONDS = 2.0


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


class DnsSettleOperator(_RegionWait):
    """Wait until no resolver may still hold the answer that named this region, then confirm from
    its edge that user requests stopped arriving, before Helm starts."""

    step = names.DNS_SETTLE

    def skipped(self) -> bool:
        if os.environ.get(SKIP_ENV) == "1":
            self.log.warning(
                "%s=1: DNS wait skipped — users may reach %s mid-change (test only)", SKIP_ENV, self.region
            )
            return True
        return False

    def drained_now(self, context: Context) -> bool:
        drained = DrainOutcome.from_xcom(
            context["ti"].xcom_pull(task_ids=names.region_task(str(self.region), names.DRAIN))
        )
        return drained is not None and drained.was_enabled

    def run(self, context: Context) -> Any:
        if self.skipped():
            return {"confirmed": False, "settled_seconds": 0}
        seconds = 0
        if self.drained_now(context):
            profile = self.hook.traffic_manager().profile_status()
            seconds = settle_seconds(profile.dns_ttl, self.fleet.traffic_manager.dns_ttl_seconds)
            self.log.info(
                "%s drained: waiting %s s for resolvers to drop it (profile TTL %s, fleet floor %s)",
                self.region, seconds, profile.dns_ttl, self.fleet.traffic_manager.dns_ttl_seconds,
            )  # fmt: skip
        path = self.fleet.gates.http.traffic_path
        if path is None:
            self.log.info(
                "gates.http.traffic_path is not set: the drain of %s is not confirmed from its edge", self.region
            )
            self.pause(seconds)
            return {"confirmed": False, "settled_seconds": 0}
        # Asked even when this try's drain found the endpoint disabled already: an earlier try may have
        # drained it a moment ago, and an edge nobody reaches answers at once anyway.
        ttl = self.fleet.traffic_manager.dns_ttl_seconds
        trigger = EdgeQuietTrigger(
            url=self.fleet.region(str(self.region)).edge_url.rstrip("/") + path,
            quiet_seconds=QUIET_SECONDS,
            timeout_seconds=seconds + max(30, 3 * ttl),
            poll_seconds=0.5,
            not_before=time.time() + seconds if seconds else None,
        )
        cause = (
            f"users still reach {self.region} {{waited:.0f}} s after its drain, {seconds} s of DNS TTL "
            "included ({detail}): a resolver holds the old answer; nothing was deployed"
        )
        ending = self.ending(names.CONFIRM_DRAINED, cause=cause, result={"confirmed": True, "settled_seconds": seconds})
        return self.wait(context, trigger, ending, look_first=not seconds)
