"""`make faults [ARGS="scenario …"]`: run the fault matrix on a private fleet and Airflow, print its table.

Per scenario: the fleet back to one consistent release with no fault set, simulated users started, a
merge triggered (`fanout trigger --wait`), the fault injected at its moment and recovered, and — when
the run fails on purpose — the fleet judged as the failure left it, the fault undone and the merge
triggered again (the operator's repair). Then the promises are checked from the fleet and the users'
records. Exits 1 if any promise broke in any scenario.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from localfleet import cli
from localfleet.fault_matrix import observe
from localfleet.fault_matrix.harness import Matrix, Run, say
from localfleet.fault_matrix.promises import Check, check_fleet, check_message, check_users
from localfleet.fault_matrix.scenarios import SCENARIOS, Injected, Scenario
from localfleet.traffic import users

USERS, RATE = 6, 2.0


@dataclass
class Row:
    scenario: str
    broken: str = "-"
    outcome: str = "-"
    recover_s: float | None = None
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def held(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def promises(self) -> str:
        broken = [c.promise for c in self.checks if not c.ok]
        held = f"{len(self.checks) - len(broken)}/{len(self.checks)} held"
        return held + (f"; BROKEN: {', '.join(broken)}" if broken else "")


def reset(m: Matrix) -> None:
    """No fault set, every part running, every region on the last release and enabled."""
    users.stop(m.state)
    cli.clear_all(m.fleet, m.state)
    m.fleet_up()
    if restarted := m.heal_stack():
        say(f"restarted {restarted}")
    m.wait_healthy()
    if not m.consistent():
        say("the fleet is not on one release: releasing a fresh commit first")
        run = m.release(m.commit("reset"), what="reset")
        if run.code != 0:
            raise RuntimeError(f"the reset release failed: {run.err[-1500:]}")


def judged_run(m: Matrix, run: Run, injected: Injected) -> Run:
    target = injected.follow or run
    run.finish(1800)
    if target is not run:
        target.finish(1800)
    return target


def run_scenario(m: Matrix, sc: Scenario) -> Row:
    row = Row(sc.name)
    reset(m)
    m.scratch.clear()
    previous = m.digest
    sha = m.commit(sc.name)
    initial = observe.endpoints_enabled(m.fleet)
    users.start(m.fleet, m.state, users=USERS, rate=RATE, duration=3600)
    since = time.time()
    sc.prepare(m)
    say(f"--- {sc.name}: merge {sha[:12]} (the fleet runs {previous[:19]})")
    run = m.trigger(sha)
    try:
        injected = sc.inject(m, run)
    except RuntimeError as err:
        injected = Injected(f"not injected: {err}", None)
    row.broken, row.notes = injected.what, list(injected.notes)
    say(f"{sc.name}: {injected.what}")
    judged = judged_run(m, run, injected)
    say(f"{sc.name}: run {judged.run_id} {judged.state}")
    row.notes += sc.undo(m)
    if restarted := m.heal_stack():
        row.notes.append(f"restarted {', '.join(restarted)} after the run")
    new = m.built(judged.run_id)
    row.checks.append(check_message(judged.state, judged.err, sc.fails, sc.words))
    row.checks += sc.verify(m, judged)  # of the faulted run, before any repair
    if injected.at is None:
        row.checks.append(Check("fault injected", False, injected.what))
    recovered = judged.ended if judged.code == 0 else None
    row.outcome = judged.state
    if judged.state == "failed":
        m.wait_healthy()
        view = observe.fleet_view(m.fleet, m.state, initial, since)
        say("after the failure:\n" + "\n".join(observe.describe(view)))
        allowed = {d for d in (previous, new) if d}
        row.checks += [_after_failure(c) for c in check_fleet(view, new or previous, allowed)]
        repair = m.release(sha, what="repair")
        say(f"{sc.name}: repair {repair.run_id} {repair.state}")
        row.outcome = f"failed, repaired: {repair.state}"
        recovered = repair.ended if repair.code == 0 else None
        new = m.built(repair.run_id) or new
    elif judged.code == 0:
        m.digest = new or m.digest
    until = time.time()
    time.sleep(m.fleet.traffic_manager.dns_ttl_seconds + 2)
    users.stop(m.state)
    view = observe.fleet_view(m.fleet, m.state, initial, since)
    say("at the end:\n" + "\n".join(observe.describe(view)))
    row.checks += check_fleet(view, m.digest)
    row.checks.append(check_users(observe.users_view(m.fleet, m.state, m.digest, since, until)))
    if recovered is not None and injected.at is not None:
        row.recover_s = recovered - injected.at
    for check in row.checks:
        say(f"  {check.line()}")
    return row


def _after_failure(check: Check) -> Check:
    return Check(f"{check.promise} (after the failure)", check.ok, check.detail)


def print_table(rows: list[Row], wall: float) -> None:
    table = [
        {
            "scenario": r.scenario,
            "what was broken, when": r.broken,
            "outcome": r.outcome,
            "recovered in": f"{r.recover_s:.0f} s" if r.recover_s is not None else "-",
            "promises": r.promises(),
        }
        for r in rows
    ]
    held = sum(r.held for r in rows)
    print(f"\n=== fault matrix: {len(rows)} scenario(s), {held} held, wall {wall / 60:.1f} min ===")
    cli.print_table(table)
    for r in rows:
        for c in r.checks:
            if not c.ok:
                print(f"  {r.scenario}: {c.line()}")
        for note in r.notes:
            print(f"  {r.scenario}: note: {note}")


def main(argv: list[str] | None = None) -> int:
    names = [s.name for s in SCENARIOS]
    parser = argparse.ArgumentParser(prog="python -m localfleet.fault_matrix", description=__doc__.split("\n")[0])
    parser.add_argument("scenarios", nargs="*", help=f"run only these (default all): {', '.join(names)}")
    parser.add_argument("--keep", action="store_true", help="leave the fleet and Airflow running afterwards")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(names)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(names)}")
    chosen = [s for s in SCENARIOS if not args.scenarios or s.name in args.scenarios]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="fanout-faults-"))
    m, rows = Matrix(folder), []
    try:
        m.up()
        first = m.release(m.commit("baseline"), what="baseline")
        if first.code != 0:
            raise RuntimeError(f"the first release failed: {first.err[-2000:]}")
        say(f"baseline release {first.run_id}: every region on {m.digest[:19]}")
        for sc in chosen:
            try:
                rows.append(run_scenario(m, sc))
            except Exception as err:  # one scenario's harness trouble must not hide the others' rows
                say(f"{sc.name}: harness error: {type(err).__name__}: {err}")
                rows.append(Row(sc.name, outcome=f"harness error: {err}"[:120], checks=[Check("ran", False, str(err))]))
            print_table(rows, time.monotonic() - started)
    except Exception as err:
        say(f"error: {type(err).__name__}: {err}")
        rows.append(Row("setup", outcome=str(err)[:200], checks=[Check("ran", False, str(err))]))
    finally:
        if args.keep:
            say(f"kept everything in {folder}")
        else:
            logs = Path(tempfile.mkdtemp(prefix="fanout-faults-logs-"))
            if m.stack.home.joinpath("logs").exists():
                shutil.copytree(m.stack.home / "logs", logs / "airflow", dirs_exist_ok=True)
            m.down()
            shutil.rmtree(folder, ignore_errors=True)
            say(f"Airflow task logs kept in {logs}")
    print_table(rows, time.monotonic() - started)
    return 0 if rows and all(r.held for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
