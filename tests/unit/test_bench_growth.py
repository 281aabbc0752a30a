"""The benchmarks' pure parts: the generated fleet, the unavoidable part of a run, /proc accounting,
and the plain script doing the DNS waits Fanout does (and labelling its build like CI)."""

import json
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest

from fanout.fleet import load_fleet
from fanout.planner import plan_waves
from localfleet import plain_release
from localfleet.bench_release import scaled_fleet
from localfleet.bench_timing import (
    DEFERRED,
    PRE_EXECUTE,
    TIME_REACHED,
    TRIGGER_FIRED,
    TRIGGER_STARTING,
    deferral,
    unavoidable,
)
from localfleet.proc_usage import PAGE, TICKS, Stat, parse_pss, parse_stat, rss, usage

NOON = datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("regions", [8, 12])
def test_a_generated_fleet_puts_every_edge_on_its_own_address_with_one_port(tmp_path, regions):
    fleet = load_fleet(scaled_fleet(tmp_path, regions))  # refused if the DNS rule is broken
    edges = [urlsplit(r.edge_url) for r in fleet.regions]
    assert len({e.hostname for e in edges}) == regions and len({e.port for e in edges}) == 1
    assert fleet.traffic_manager.dns_port is not None
    assert all(len(w.regions) <= 4 for w in plan_waves(fleet).waves)


def ti(task_id, start, end):
    stamp = "2026-11-30T12:{:02d}:{:06.3f}+00:00"
    return {"task_id": task_id, "state": "success", "start_date": stamp.format(*divmod(start, 60)),
            "end_date": stamp.format(*divmod(end, 60))}  # fmt: skip


def test_unavoidable_is_build_slowest_replica_and_per_wave_the_slowest_region_plus_bake():
    tis = [
        ti("build", 0, 10),  # 2 s of it start-up
        ti("wait_replication_a", 10, 13),
        ti("wait_replication_b", 10, 16),
        ti("deploy_a.drain", 17, 18),
        ti("deploy_a.helm_deploy", 19, 25),  # 1 s start-up
        ti("deploy_a.rollback", 26, 26),
        ti("bake_after_wave_1", 26, 30),
        ti("deploy_b.helm_deploy", 31, 34),
        ti("deploy_c.helm_deploy", 31, 36),
        ti("rebalance", 37, 38),
    ]
    startup = {"build": (2.0, 1.5), "deploy_a.helm_deploy": (1.0, 0.5)}
    got = unavoidable(tis, startup, [["a"], ["b", "c"]])
    assert got["build"] == 8 and got["replica"] == 6
    assert [(w["slowest"], w["region"], w["bake"]) for w in got["waves"]] == [("a", 6.0, 4.0), ("c", 5.0, 0.0)]
    assert got["total"] == 8 + 6 + 6 + 4 + 5


def test_a_stat_line_is_split_after_the_last_parenthesis_of_the_command():
    fields = ["S", "7"] + ["0"] * 9 + [str(3 * TICKS), str(TICKS), str(5 * TICKS), "0"] + ["0"] * 6 + ["10"]
    stat = parse_stat("42 (airflow (task) x) " + " ".join(fields))
    assert (stat.pid, stat.ppid, stat.own, stat.reaped, stat.rss) == (42, 7, 4.0, 5.0, 10 * PAGE)


def test_workers_are_the_schedulers_descendants_with_what_they_reaped():
    stats = {
        1: Stat(1, 0, 100.0, 0.0, 0),  # not ours
        10: Stat(10, 1, 5.0, 2.0, 100),  # the scheduler; it reaped a worker that used 2 s
        11: Stat(11, 10, 1.0, 30.0, 200),  # a worker and the task processes it ran
        12: Stat(12, 11, 4.0, 1.0, 300),  # a task process running now (helm reaped: 1 s)
        20: Stat(20, 1, 3.0, 0.0, 50),  # the triggerer
    }
    got = usage(stats, {"scheduler": 10, "triggerer": 20, "apiserver": None})
    assert got == {"scheduler": 5.0, "workers": 2.0 + 31.0 + 5.0, "triggerer": 3.0}
    assert rss(stats, {"scheduler": 10, "triggerer": 20}) == 650


class Recorder(plain_release.Plain):
    def __init__(self, dns_waits):
        self.dns_waits, self.fleet, self.calls = dns_waits, {"gates": {"soak_seconds": 0}}, []

    def set_endpoint(self, region, enabled):
        self.calls.append("enable" if enabled else "disable")

    def dns_settle(self):
        self.calls.append("ttl")

    def confirm_drained(self, region, quiet=2.0):
        self.calls.append("drained")

    def helm_upgrade(self, region, digest, sha):
        self.calls.append("helm")

    def edge_serves(self, region, digest):
        self.calls.append("edge")

    def wait_online(self, region, timeout=300):
        self.calls.append("online")


def test_the_plain_script_waits_for_dns_as_fanout_does_unless_told_not_to():
    honest, old = Recorder(dns_waits=True), Recorder(dns_waits=False)
    for plain in (honest, old):
        plain.release_region("westus", "sha256:x", "abc")
    assert honest.calls == ["disable", "ttl", "drained", "helm", "edge", "enable", "online"]
    assert old.calls == ["disable", "helm", "edge", "enable"]


def test_the_plain_build_carries_the_labels_ci_would_write(monkeypatch, tmp_path):
    argvs = []

    def run(argv, **_):
        argvs.append(argv)
        if "push" in argv:
            with open(argv[argv.index("--digestfile") + 1], "w") as f:
                f.write("sha256:abc")

    monkeypatch.setattr(plain_release.subprocess, "run", run)
    label = "org.opencontainers.image.revision=" + "a" * 40
    assert plain_release.build_and_push(tmp_path, "127.0.0.1:1/app:x", tmp_path, [label]) == "sha256:abc"
    bud = argvs[0]
    assert bud[bud.index("--label") + 1] == label


def test_trigger_latency_is_pickup_plus_fired_to_ended(tmp_path):
    def line(second, event):
        return json.dumps({"timestamp": f"2026-11-30T12:00:{second:06.3f}Z", "event": event})

    (tmp_path / "attempt=1.log").write_text("\n".join([line(1.0, PRE_EXECUTE), line(2.0, DEFERRED)]))
    (tmp_path / "attempt=1.log.trigger.7.log").write_text(
        "\n".join([line(3.5, TRIGGER_STARTING), line(6.0, TRIGGER_FIRED)])
    )
    assert deferral(tmp_path, NOON + 6.75) == (1.5, 0.75)
    (tmp_path / "attempt=1.log.trigger.7.log").write_text(
        "\n".join([line(3.5, TRIGGER_STARTING), line(5.9, TIME_REACHED + "; marking"), line(6.0, TRIGGER_FIRED)])
    )
    assert deferral(tmp_path, NOON + 6.75) == (0.0, 0.75)  # a pause ends on time however late it started
    (tmp_path / "attempt=1.log").write_text(line(1.0, PRE_EXECUTE))
    assert deferral(tmp_path, NOON + 6.75) is None  # ended in the worker: no trigger latency


def test_unavoidable_leaves_out_the_trigger_latency_of_deferred_waits():
    tis = [ti("build", 0, 4), ti("deploy_a.gate_soak", 5, 10)]
    got = unavoidable(tis, {}, [["a"]], {"deploy_a.gate_soak": 2.0})
    assert (got["waves"][0]["region"], got["total"]) == (3.0, 7.0)


def test_pss_is_read_from_smaps_rollup():
    assert parse_pss("Rss:   2048 kB\nPss:    512 kB\nShared_Clean: 1 kB\n") == 512 * 1024
