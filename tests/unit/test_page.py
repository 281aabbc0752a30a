"""The Fanout page's document from recorded data: the newest run step by step, each region's
history, the approvals with what they decide on, and the matrix `fanout status` shares."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fanout import names, page, status

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NEW, OLD = "sha256:" + "a" * 64, "sha256:" + "b" * 64
SHA, SHA2 = "1" * 40, "2" * 40
WAVES = [["westus"], ["eastus", "northeurope"], ["westeurope"]]
REGIONS = [("eastus", "westus"), ("westus", "eastus"), ("northeurope", "westeurope"), ("westeurope", "northeurope")]


def at(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).isoformat()


def ti(task_id: str, state: str | None, started: float | None = None, ended: float | None = None) -> dict:
    return {"task_id": task_id, "map_index": -1, "state": state,
            "start_date": at(started) if started is not None else None,
            "end_date": at(ended) if ended is not None else None}  # fmt: skip


def region_tis(region: str, states: dict[str, str], skipped: bool = False) -> list[dict]:
    """A region's tasks: those in `states` with that state (started a minute ago), the rest not yet run."""
    steps = [step for step, _ in page.STEPS]
    found = []
    for step in steps:
        task_id = names.wait_replication(region) if step == names.WAIT_REPLICATION else names.region_task(region, step)
        state = states.get(step, "skipped" if skipped else None)
        done = state in ("success", "failed")
        found.append(ti(task_id, state, 60 if state not in (None, "skipped") else None, 30 if done else None))
    return found


def by_id(tis: list[dict]) -> dict[str, dict]:
    return {t["task_id"]: t for t in tis}


def test_a_region_step_is_its_latest_running_task_with_how_long_it_has_run():
    replica = region_tis("eastus", {names.WAIT_REPLICATION: "deferred"})
    assert page.region_step("eastus", by_id(replica), NOW) == {
        "step": "waiting for its replica", "state": "deferred", "since": at(60), "elapsed_s": 60,
    }  # fmt: skip
    for step, state, label in [
        (names.DRAIN, "running", "draining"), (names.DRAIN, "deferred", "held back"),
        (names.DNS_SETTLE, "deferred", "waiting for DNS"), (names.HELM_DEPLOY, "running", "deploying"),
        (names.GATES, "deferred", "gates: rollout, http, soak"), (names.RESTORE, "running", "restoring"),
        (names.RESTORE, "deferred", "restored, waiting for DNS"),
    ]:  # fmt: skip
        before = {s: "success" for s, _ in page.STEPS[: [s for s, _ in page.STEPS].index(step)]}
        before.pop(names.ROLLBACK, None)
        tis = region_tis("eastus", {**before, step: state})
        assert page.region_step("eastus", by_id(tis), NOW)["step"] == label, (step, state)


def test_a_finished_region_says_restored_rolled_back_failed_or_not_in_the_run():
    good = {s: "success" for s, _ in page.STEPS if s not in (names.ROLLBACK, names.GATE_METRICS)}
    restored = page.region_step("eastus", by_id(region_tis("eastus", {**good, names.ROLLBACK: "skipped"})), NOW)
    assert restored == {"step": "restored", "state": "success", "since": at(30), "elapsed_s": 30}
    failed = {names.WAIT_REPLICATION: "success", names.DRAIN: "success", names.HELM_DEPLOY: "success",
              names.GATES: "failed", names.RESTORE: "upstream_failed"}  # fmt: skip

    def after_failure(rollback: str) -> str:
        return page.region_step("eastus", by_id(region_tis("eastus", {**failed, names.ROLLBACK: rollback})), NOW)[
            "step"
        ]

    assert after_failure("running") == "rolling back"
    assert after_failure("success") == "rolled back"
    assert after_failure("skipped") == "failed at gates"
    assert page.region_step("eastus", by_id(region_tis("eastus", {}, skipped=True)), NOW)["step"] == "not in this run"
    assert page.region_step("eastus", by_id(region_tis("eastus", {})), NOW)["step"] == "waiting"


def test_the_current_release_is_at_the_furthest_wave_a_region_started():
    done = {s: "success" for s, _ in page.STEPS if s not in (names.ROLLBACK, names.GATE_METRICS)}
    tis = [
        *region_tis("westus", {**done, names.ROLLBACK: "skipped"}),
        *region_tis(
            "eastus", {names.WAIT_REPLICATION: "success", names.DRAIN: "success", names.HELM_DEPLOY: "running"}
        ),
        *region_tis("northeurope", {names.WAIT_REPLICATION: "success"}),
        *region_tis("westeurope", {names.WAIT_REPLICATION: "success"}),
        ti("build", "success", 300, 200),
        ti(names.bake_after_wave(1), "success", 100, 90),
    ]
    run = {"dag_id": "release_hello", "dag_run_id": "merge__1", "state": "running", "start_date": at(300),
           "end_date": None, "conf": {"git_sha": SHA, "source_ref": "main", "dry_run": False}}  # fmt: skip
    current = page.current_release(run, tis, WAVES, NOW)
    assert (current["run_id"], current["state"], current["wave"], current["waves"]) == ("merge__1", "running", 2, 3)
    assert current["elapsed_s"] == 300 and current["conf"] == {"git_sha": SHA, "source_ref": "main"}
    assert current["regions"]["westus"]["step"] == "restored"
    assert current["regions"]["eastus"] == {"step": "deploying", "state": "running", "since": at(60), "elapsed_s": 60}
    assert current["regions"]["westeurope"]["step"] == "waiting"
    assert current["link"] == "/dags/release_hello/runs/merge__1"
    tis.append(ti(names.APPROVE_AFTER_CANARY, "deferred", 10))
    assert page.current_release(run, tis, WAVES, NOW)["under_way"] == [names.APPROVE_AFTER_CANARY]
    assert page.current_release(None, [], WAVES, NOW) is None


def release_event(run_id: str, digest: str, sha: str, regions: list[str], held_back: dict | None = None) -> dict:
    extra = {"app": "hello", "digest": digest, "git_sha": sha, "source_ref": "main", "run_id": run_id,
             "regions": regions, "held_back": held_back or {},
             "outcome": {r: {"serving": OLD if r in (held_back or {}) else digest} for r in regions}}  # fmt: skip
    return {"source_dag_id": "release_hello", "source_task_id": "record", "timestamp": at(0), "extra": extra}


def test_history_lists_recorded_releases_and_failed_runs_per_region_newest_first():
    first = release_event("merge__1", OLD, SHA, ["eastus", "westus"]) | {"timestamp": at(3000)}
    second = release_event("merge__2", NEW, SHA2, ["eastus", "westus"], {"westus": "gate_http failed"})
    second["timestamp"] = at(1000)
    forged = release_event("forged", NEW, SHA2, ["eastus"]) | {"source_dag_id": None}
    runs = [
        {"dag_run_id": "merge__3", "state": "failed", "start_date": at(500), "end_date": at(400),
         "conf": {"git_sha": "3" * 40, "regions": ["eastus"]}},
        {"dag_run_id": "merge__2", "state": "success", "start_date": at(1300), "end_date": at(1000), "conf": {}},
        {"dag_run_id": "dry", "state": "failed", "start_date": at(200), "end_date": at(100), "conf": {"dry_run": True}},
    ]  # fmt: skip
    found = page.history("hello", ["eastus", "westus"], [second, forged, first], runs, NOW)
    east = found["eastus"]
    assert [(r["run_id"], r["outcome"], r["commit"], r["digest"], r["duration_s"]) for r in east] == [
        ("merge__3", "failed", "3" * 40, None, 100),
        ("merge__2", "released", SHA2, NEW, 300),
        ("merge__1", "released", SHA, OLD, None),  # its run is older than the runs read
    ]
    assert [(r["run_id"], r["outcome"]) for r in found["westus"]] == [
        ("merge__2", "held back: gate_http failed"),
        ("merge__1", "released"),
    ]
    assert east[0]["link"] == "/dags/release_hello/runs/merge__3"
    assert len(page.history("hello", ["eastus"], [first] * 20, [], NOW, length=4)["eastus"]) == 4


def test_an_approval_after_the_canary_shows_its_gates_and_a_link_to_answer_it():
    gates = [ti(names.region_task("westus", g), "success", 100, 50) for g in page.GATE_STEPS]
    pending = [{"task_instance": {"task_id": names.APPROVE_AFTER_CANARY}, "subject": "Continue?",
                "options": ["Approve", "Reject"], "created_at": at(45), "response_received": False},
               {"task_instance": {"task_id": "answered"}, "response_received": True}]  # fmt: skip
    found = page.approvals("hello", "merge__1", pending, gates, ["westus"], {}, NOW)
    assert len(found) == 1
    approval = found[0]
    assert approval["link"] == "/dags/release_hello/runs/merge__1/tasks/approve_after_canary/required_actions"
    assert (approval["subject"], approval["waiting_s"], approval["options"]) == ("Continue?", 45, ["Approve", "Reject"])
    assert approval["gates"] == {"westus": {g: {"state": "success", "duration_s": 50} for g in page.GATE_STEPS}}
    hotfix = [{"task_instance": {"task_id": names.APPROVE_HOTFIX}, "subject": "Hotfix?", "created_at": at(5)}]
    conf = {"git_sha": SHA, "hotfix": True, "hotfix_reason": "CVE"}
    found = page.approvals("hello", "hotfix__1", hotfix, [], ["westus"], conf, NOW)
    assert found[0]["hotfix"] == {"git_sha": SHA, "image": None, "hotfix_reason": "CVE"} and found[0]["gates"] == {}
    assert found[0]["link"].startswith("/dags/release_hello/runs/hotfix__1/tasks/approve_hotfix/")
    assert page.ui_run("release_hello", "merge__a:b+c") == "/dags/release_hello/runs/merge__a%3Ab%2Bc"


def test_the_document_shares_fanout_status_rows_and_links_each_region_s_last_run():
    deployment = {"digest": NEW, "git_sha": SHA, "replicas": 2, "available": 2}
    endpoint = {"enabled": True, "weight": 100, "monitor_status": "Online"}
    live = {"eastus": status.live_region(deployment, (4, "deployed"), endpoint)}
    runs = [{"dag_run_id": "merge__2", "state": "success", "start_date": at(600), "end_date": at(100), "conf": {}}]
    report = {"checked_at": at(60), "message": "all in sync", "mode": "report",
              "regions": {"eastus": {"state": "in-sync", "since": at(3600)}}}  # fmt: skip
    recorded = {"events": [release_event("merge__2", NEW, SHA, ["eastus"])], "runs": runs, "report": report,
                "task_instances": [], "pending": []}  # fmt: skip
    doc = page.document("hello", REGIONS, WAVES, ["westus"], recorded, live, ["a problem"], NOW)
    expected = status.status_rows(REGIONS, WAVES, live, report, status.last_runs([r for r, _ in REGIONS], runs))
    east = doc["regions"][0]
    assert {row["last_run"].pop("link") for row in doc["regions"]} == {"/dags/release_hello/runs/merge__2"}
    assert doc["regions"] == expected
    assert (east["running"], east["helm"], east["state"]) == (NEW, {"revision": 4, "status": "deployed"}, "in-sync")
    assert doc["release"]["digest"] == NEW and doc["consistency"]["message"] == "all in sync"
    assert doc["current"]["run_id"] == "merge__2" and doc["current"]["state"] == "success"
    assert doc["history"]["eastus"][0]["outcome"] == "released" and doc["history"]["westus"] == []
    assert doc["problems"] == ["a problem"] and doc["read_at"] == NOW.isoformat()
    empty = page.document("hello", REGIONS, WAVES, [], {}, None, [], NOW)
    assert empty["current"] is None and empty["release"] is None and empty["regions"][0]["running"] is None
    assert doc["live"] is True and empty["live"] is False
