"""Release policy as plain functions over plain data: when a region may be drained,
when a rollout is done, what the traffic should look like at the end of a run.
No I/O here: the operators gather the facts, these functions decide."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from fanout.fleet import Fleet
from fanout.routing import orphaned_geographies

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")  # \Z: `$` would also take a trailing newline


class PolicyError(RuntimeError):
    """A change the release policy refuses; the message says which rule and why."""


@dataclass(frozen=True)
class EndpointState:
    """One Traffic Manager endpoint as Azure reports it."""

    name: str
    type: str  # ExternalEndpoints | AzureEndpoints | NestedEndpoints
    enabled: bool
    weight: int | None
    monitor_status: str | None  # CheckingEndpoint, Online, Degraded, Disabled, Inactive, Stopped, Unmonitored
    target: str | None = None


def digest_of(image: str) -> str | None:
    """The digest an image reference is pinned to (`repo@sha256:…`), or None for a tag."""
    _, at, digest = image.rpartition("@")
    return digest if at and DIGEST.match(digest) else None


def check_drain(fleet: Fleet, endpoints: dict[str, EndpointState], region: str) -> None:
    """Refuse to disable `region`'s endpoint if that breaks min serving or the drain share.

    `endpoints` is the live state by endpoint name. Regions already disabled count as
    drained: a region that is down eats into the same budget as one being deployed.
    """
    name = fleet.region(region).endpoint.name
    by_region = {r.name: endpoints.get(r.endpoint.name) for r in fleet.regions}
    missing = [r for r, e in by_region.items() if e is None]
    if missing:
        raise PolicyError(f"Traffic Manager has no endpoint for region(s) {', '.join(missing)}")
    enabled_after = [r for r, e in by_region.items() if e.enabled and r != region]
    if endpoints[name].enabled and len(enabled_after) < fleet.min_serving_regions:
        raise PolicyError(
            f"draining {region} would leave {len(enabled_after)} region(s) serving "
            f"({', '.join(enabled_after) or 'none'}), below min_serving_regions {fleet.min_serving_regions}"
        )
    if fleet.traffic_manager.routing_method == "Geographic" and endpoints[name].enabled:
        # The plan checked each wave alone; a fallback drained now (down, or held back) counts too.
        down = [r for r, e in by_region.items() if not e.enabled]
        lost = sorted(set(orphaned_geographies(fleet, [*down, region])) - set(orphaned_geographies(fleet, down)))
        if lost:
            raise PolicyError(
                f"draining {region} would leave geograph{'y' if len(lost) == 1 else 'ies'} {', '.join(lost)} with "
                f"no answer while {', '.join(down) or 'nothing else'} {'is' if len(down) == 1 else 'are'} drained "
                "(Geographic routing does not fail over; a nested endpoint needs min_child_endpoints regions)"
            )
    weights = {r.name: r.traffic_weight for r in fleet.regions}
    drained = [r for r, e in by_region.items() if not e.enabled or r == region]
    drained_weight = sum(weights[r] for r in drained)
    limit = fleet.rollout.max_drain_share * fleet.total_weight
    if drained_weight > limit + 1e-9:
        raise PolicyError(
            f"draining {region} would take {drained_weight}/{fleet.total_weight} of the weight out of service "
            f"({', '.join(drained)}), above rollout.max_drain_share {fleet.rollout.max_drain_share:.0%}"
        )


@dataclass(frozen=True)
class RolloutStatus:
    done: bool
    reason: str


APP_CONTAINER = "app"


def app_container(containers: list[dict[str, Any]]) -> dict[str, Any]:
    """The container that runs the app: the chart names it "app"; other charts, the first one."""
    return next((c for c in containers if c.get("name") == APP_CONTAINER), containers[0] if containers else {})


def deployment_facts(deployment: dict[str, Any] | None) -> dict[str, Any] | None:
    """The few fields of a Deployment (API JSON, camelCase) that rollout and drift judge."""
    if deployment is None:
        return None
    spec, status = deployment.get("spec", {}), deployment.get("status") or {}
    image = app_container(spec.get("template", {}).get("spec", {}).get("containers") or []).get("image", "")
    notes = deployment.get("metadata", {}).get("annotations") or {}
    return {
        "image": image,
        # Which commit the region runs, as the release's chart wrote it (chart_values).
        "git_sha": notes.get("fanout.dev/git-sha") or None,
        "source_ref": notes.get("fanout.dev/source-ref") or None,
        "digest": digest_of(image),
        "replicas": spec.get("replicas", 1),
        "updated": status.get("updatedReplicas", 0),
        "available": status.get("availableReplicas", 0),
        "total": status.get("replicas", 0),
        "generation": deployment.get("metadata", {}).get("generation", 0),
        "observed_generation": status.get("observedGeneration", 0),
    }


def rollout_status(deployment: dict[str, Any] | None, digest: str) -> RolloutStatus:
    """Is this Deployment (as the API returns it, camelCase) fully rolled out on `digest`?"""
    facts = deployment_facts(deployment)
    if facts is None:
        return RolloutStatus(False, "the Deployment does not exist")
    if facts["digest"] != digest:
        return RolloutStatus(False, f"the Deployment runs {facts['image'] or 'no image'}, not {digest}")
    want, updated, available = facts["replicas"], facts["updated"], facts["available"]
    if facts["observed_generation"] < facts["generation"]:
        return RolloutStatus(
            False, f"generation {facts['generation']} not yet observed (at {facts['observed_generation']})"
        )
    if updated < want:
        return RolloutStatus(False, f"{updated}/{want} replicas updated")
    if facts["total"] > updated:
        return RolloutStatus(False, f"{facts['total'] - updated} old replica(s) still terminating")
    if available < want:
        return RolloutStatus(False, f"{available}/{want} replicas available")
    return RolloutStatus(True, f"{available}/{want} replicas available on {digest[:19]}")


def final_traffic(
    fleet: Fleet,
    endpoints: dict[str, EndpointState],
    serving: dict[str, str | None],
    digest: str | None,
    scope: Collection[str] | None = None,
) -> tuple[dict[str, EndpointState], list[str]]:
    """The endpoint states a run should end with, and the warnings to report.

    A region serving `digest` is enabled at its configured weight. A region that is not
    stays (or becomes) disabled — unless that would leave fewer than min_serving_regions
    enabled (or none at all: Traffic Manager answers NXDOMAIN then), in which case the
    stale regions with the most weight are kept enabled and a warning says so.
    Regions outside `scope` (default: all) keep their current state: a run that targeted
    a subset, or halted before later waves, leaves the untouched regions as they were.
    `digest` None means the run never got a release: only the floor rule applies.
    """
    desired: dict[str, EndpointState] = {}
    warnings: list[str] = []
    stale: list[str] = []
    for region in fleet.regions:
        current = endpoints[region.endpoint.name]
        fresh = digest is not None and serving.get(region.name) == digest
        if digest is None or (scope is not None and region.name not in scope):
            desired[region.name] = current
        elif fresh and region.standby:
            desired[region.name] = current  # a warm standby serves when the profile says, not when released
        elif fresh:
            desired[region.name] = replace(current, enabled=True, weight=region.endpoint.weight)
        else:
            stale.append(region.name)
            desired[region.name] = replace(current, enabled=False)
    enabled = [r for r, e in desired.items() if e.enabled]
    floor = max(fleet.min_serving_regions, 1)
    heaviest_first = lambda r: (-fleet.region(r).endpoint.weight, fleet.region_names.index(r))  # noqa: E731
    # Below the floor, stale regions that serve something come back first, then any
    # other drained region that answers: old code served beats NXDOMAIN.
    spare = [r for r in fleet.region_names if not desired[r].enabled and r not in stale and serving.get(r)]
    candidates = sorted(stale, key=heaviest_first) + sorted(spare, key=heaviest_first)
    while len(enabled) < floor and candidates:
        region = candidates.pop(0)
        desired[region] = replace(desired[region], enabled=True, weight=fleet.region(region).endpoint.weight)
        enabled.append(region)
        what = f"does not serve {digest} ({serving.get(region) or 'nothing'})" if digest else "was drained"
        warnings.append(f"{region} {what} but is enabled: min_serving_regions is {fleet.min_serving_regions}")
    for region in candidates:
        if region in stale:
            warnings.append(f"{region} serves {serving.get(region) or 'nothing'}, not {digest}: left drained")
    return desired, warnings


def rollback_all_targets(
    deploys: Mapping[str, Mapping[str, Any] | None], rolled_back: Mapping[str, Mapping[str, Any] | None]
) -> dict[str, int | None]:
    """failure_policy rollback-all: the regions this run upgraded that still run its release,
    each with the Helm revision to return to (None: a first install, there is nothing older).

    `deploys` holds each region's helm_deploy result ({"changed", "previous_revision", …}); a
    region whose upgrade was skipped because the digest was already live was not changed by this
    run and keeps what it runs. `rolled_back` holds each region's own rollback outcome: a region
    that its gate failure already sent back is not rolled back a second time.
    """
    targets: dict[str, int | None] = {}
    for region, deploy in deploys.items():
        if not deploy or not deploy.get("changed"):
            continue
        if (rolled_back.get(region) or {}).get("rolled_back_to"):
            continue
        targets[region] = deploy.get("previous_revision")
    return targets


def traffic_after_failure(*, was_enabled: bool, healthy: bool, runs_known_good: bool) -> bool:
    """Should a region whose release step failed take traffic again (True) or stay drained?

    Only a region this run drained comes back (one drained before the run stays as it was), and
    only when it answers healthy on code that was serving before: its previous revision after a
    rollback, or the unchanged release when the upgrade never happened. The min-serving floor is
    the rebalance step's job, over the whole fleet.
    """
    return was_enabled and healthy and runs_known_good


def chart_values(
    fleet: Fleet, region: str, digest: str, run_id: str, git_sha: str, source_ref: str = ""
) -> dict[str, Any]:
    """The values a region's Helm release gets: the fleet's, with the image pinned by digest and the
    commit it was built from (the chart writes both onto the Deployment)."""
    registry = fleet.registry
    return {
        **fleet.app.values,
        "image": {"repository": f"{registry.pull_host(region)}/{registry.repository}", "digest": digest},
        "region": region,
        "release": {"runId": run_id, "gitSha": git_sha, "sourceRef": source_ref},
    }


def helm_description(run_id: str, git_sha: str, source_ref: str) -> str:
    """The Helm release description: `helm history` then says which run and commit made each revision."""
    return f"fanout run {run_id} git {git_sha} ref {source_ref}"


@dataclass(frozen=True)
class RunRequest:
    """One release run as the queue sees it: who asked for what, and when."""

    run_id: str
    run_after: datetime
    git_sha: str | None
    regions: tuple[str, ...] | None  # None: every region
    dry_run: bool = False
    # Why `validate` will refuse this run (empty: nothing known against it).
    problems: tuple[str, ...] = ()

    @classmethod
    def from_conf(
        cls, run_id: str, run_after: datetime, conf: Mapping[str, Any] | None, declared: Collection[str] = ()
    ) -> RunRequest:
        """`declared`: the conf keys the DAG takes; a run with others is refused by `validate`."""
        conf = conf or {}
        regions = conf.get("regions")
        unknown = sorted(set(conf) - set(declared)) if declared else []
        problems = tuple(f"unknown conf key {key!r}" for key in unknown)
        if not isinstance(conf.get("git_sha"), str):
            problems += ("no git_sha",)
        return cls(
            run_id, run_after, conf.get("git_sha"), tuple(regions) if regions else None, bool(conf.get("dry_run")),
            problems,
        )  # fmt: skip


def superseding_run(me: RunRequest, queued: Collection[RunRequest]) -> RunRequest | None:
    """The newest queued run that makes `me` pointless, or None when `me` should go ahead.

    A newer run supersedes an older one only when it would do at least the same work: it is
    not a dry run and it covers every region the older one targets. So a burst of merges
    ends with one release of the newest commit, while a newer one-region repair never
    cancels an older full release (nor a dry run anything), and a run `validate` will refuse
    never cancels one that would release."""
    if me.dry_run:
        return None  # a dry run changes nothing; there is nothing to save by skipping it
    candidates = [
        run
        for run in queued
        if run.run_id != me.run_id
        and (run.run_after, run.run_id) > (me.run_after, me.run_id)
        and not run.dry_run
        and not run.problems
        and (run.regions is None or (me.regions is not None and set(me.regions) <= set(run.regions)))
    ]
    return max(candidates, key=lambda run: (run.run_after, run.run_id), default=None)


@dataclass(frozen=True)
class WaveVerdict:
    """Whether a wave lets the release go on: at least `needed` of the wave's regions in this run
    passed every step. The others were rolled back by their own rollback and are held back."""

    number: int
    regions: tuple[str, ...]  # the wave's regions in this run
    passed: tuple[str, ...]
    needed: int
    started: bool  # False: no region of the wave was drained (something before it failed)

    @property
    def ok(self) -> bool:
        return self.started and len(self.passed) >= self.needed

    @property
    def held_back(self) -> tuple[str, ...]:
        return tuple(r for r in self.regions if r not in self.passed) if self.started else ()

    def line(self) -> str:
        if not self.started:
            return f"wave {self.number} did not start: no region of it was drained"
        held = f"; held back: {', '.join(self.held_back)}" if self.held_back else ""
        verdict = "passes" if self.ok else "fails"
        counts = f"{len(self.passed)} of {len(self.regions)} regions passed, {self.needed} needed"
        return f"wave {self.number} {verdict}: {counts}{held}"


def wave_verdict(number: int, regions: Collection[str], passed: Collection[str], started: bool,
                 quorum: int | str, canary: bool) -> WaveVerdict:  # fmt: skip
    """The verdict on wave `number` given the regions of it this run targets and those that passed.

    `quorum` is rollout.wave_quorum: "all", or N — at least N of the wave's M regions (all of them
    when M <= N). A canary wave always needs every region: a failed canary is the signal it exists for."""
    ordered = tuple(regions)
    needed = len(ordered) if quorum == "all" or canary else min(int(quorum), len(ordered))
    return WaveVerdict(number, ordered, tuple(r for r in ordered if r in passed), needed, started)


def tolerated_failures(verdicts: Collection[WaveVerdict]) -> set[str]:
    """The regions whose failure the release tolerates: held back in a wave that passed."""
    return {region for v in verdicts if v.ok for region in v.held_back}
