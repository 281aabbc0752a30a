"""bench-release's pure parts: the critical path of a run, its breakdown, a task's start-up from its log."""

import json
from datetime import UTC, datetime

from localfleet.bench_timing import breakdown, critical_path, task_startup

NOON = datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()


def ti(task_id, start, end, state="success"):
    stamp = "2026-11-30T12:00:{:06.3f}+00:00".format
    return {"task_id": task_id, "state": state, "start_date": stamp(start), "end_date": stamp(end)}


def test_the_critical_path_follows_the_upstream_that_ended_last():
    tis = [ti("build", 1, 5), ti("wait_a", 6, 8), ti("wait_b", 6, 12), ti("deploy_a", 9, 10), ti("deploy_b", 13, 20)]
    upstream = {"wait_a": ["build"], "wait_b": ["build"], "deploy_a": ["wait_a"], "deploy_b": ["wait_b", "deploy_a"]}
    assert [t["task_id"] for t in critical_path(tis, upstream)] == ["build", "wait_b", "deploy_b"]


def test_breakdown_splits_each_task_into_gap_startup_and_work():
    tis = [ti("build", 1, 5), ti("wait_b", 6, 12)]
    start = NOON + 0.5  # half a second before build started
    rows = breakdown(critical_path(tis, {"wait_b": ["build"]}), start, {"build": (1.5, 1.0), "wait_b": (2.0, 0.5)})
    assert [(r["task"], round(r["gap"], 3), r["process"], r["parse"], round(r["work"], 3)) for r in rows] == [
        ("build", 0.5, 0.5, 1.0, 2.5),
        ("wait_b", 1.0, 1.5, 0.5, 4.0),
    ]


def test_startup_counts_each_process_start_until_the_dag_file_is_parsed(tmp_path):
    def line(second, event, **more):
        return json.dumps({"timestamp": f"2026-11-30T12:00:{second:06.3f}Z", "event": event, **more})

    log = tmp_path / "attempt=1.log"
    log.write_text(
        "\n".join(
            [
                line(1.0, "::group::Pre Execute"),
                line(1.2, "Filling up the DagBag from /dags/fanout_dags.py"),
                line(2.5, "Worker startup parse complete", dag_file_parse_ms=1300),  # 2.5 - 0.5 (start_date)
                line(2.6, "waiting for the replica"),
                line(3.0, "Pausing task as DEFERRED. "),
                line(9.0, "::group::Pre Execute"),  # resumed after the trigger fired
                line(10.0, "Worker startup parse complete", dag_file_parse_ms=800),  # 10.0 - 9.0
                line(10.5, "the replica has the digest"),
            ]
        )
    )
    startup, parse = task_startup(log, NOON + 0.5)
    assert (round(startup, 3), round(parse, 3)) == (2.0 + 1.0, 1.3 + 0.8)
