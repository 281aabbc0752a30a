"""`fanout freeze`, `unfreeze`, `pause`, `resume`, `quarantine`, `unquarantine` and `audit`: stop
every change to an app's regions at once, hold its releases before their next wave, keep a bad
build from being released, lift each, and list who did what, through Airflow's REST API (httpx
only, as `fanout trigger`).

Airflow decides who may: setting a Variable needs a role that may edit Variables, so an anonymous
or read-only user is refused with Airflow's own 401/403. Each action that took effect also writes
an audit record, a Variable of its own (`names.audit_variable_prefix`); Airflow's event log says
who wrote each one. That log alone would not do: it records every write Airflow was asked for,
refused ones too. `fanout audit` lists the records with the user Airflow signed in for each.
What a freeze or quarantine means is fanout.controls.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from fanout import names
from fanout.controls import (
    Freeze,
    Pause,
    Quarantine,
    check_regions,
    parse_freeze,
    parse_pause,
    parse_quarantine,
    rollback_target,
)
from fanout.trigger import (
    DEFAULT_URL,
    ENV_TOKEN,
    ENV_URL,
    ENV_USERNAME,
    EXIT_OK,
    TriggerError,
    build_conf,
    connect,
    usage_error,
)

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")  # as fanout.policy's, which would import pydantic here
# The event Airflow's API logs for a Variable created through it (the endpoint function's name).
CREATED = "post_variable"


def add_arguments(sub: Any) -> None:
    helps = {
        "freeze": "stop every change to the app's regions (or --regions) until unfreeze or --until",
        "unfreeze": "lift the app's freeze",
        "pause": "hold the app's releases before their next wave's drains (regions mid-change finish)",
        "resume": "let the app's paused releases go on",
        "quarantine": "keep a digest of the app from ever being released (validate and every drain refuse it) "
        "and release the last good release again to the regions that run it",
        "unquarantine": "lift a digest's quarantine",
        "audit": "who froze, paused, quarantined and lifted, when and why (Airflow's event log)",
    }
    for command, text in helps.items():
        parser = sub.add_parser(command, help=text, description=text)
        parser.add_argument("--app", required=True, help="the app (its release DAG is release_<app>)")
        parser.add_argument("--airflow-url", help=f"Airflow's base URL (default: ${ENV_URL} or {DEFAULT_URL})")
        if command in ("quarantine", "unquarantine"):
            parser.add_argument("digest", help="the image digest, sha256:<64 hex>")
        if command == "quarantine":
            parser.add_argument(
                "--no-roll-back", dest="roll_back", action="store_false",
                help="only quarantine; do not release the last good release to the regions that run it",
            )  # fmt: skip
        if command == "freeze":
            parser.add_argument("--regions", help="comma-separated regions (default: every region)")
            parser.add_argument("--until", help="ISO 8601 time the freeze ends by itself, e.g. 2026-12-01T06:00Z")
        if command != "audit":
            parser.add_argument("--reason", required=True, help="why: shown to every run it stops, and audited")
        else:
            parser.add_argument("--limit", type=int, default=50, help="entries to show (default 50)")


def run(
    args: argparse.Namespace,
    *,
    env: Mapping[str, str] = os.environ,
    transport: httpx.BaseTransport | None = None,
    stdout: Any = None,
    stderr: Any = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        api = connect(args.airflow_url or env.get(ENV_URL) or DEFAULT_URL, env, transport=transport, sleep=sleep)
        try:
            return COMMANDS[args.command](api, args, env, out, now())
        finally:
            api.close()
    except TriggerError as error:
        print(f"fanout {args.command}: {error}", file=err, flush=True)
        return error.exit_code


def _freeze(api: Any, args: argparse.Namespace, env: Mapping[str, str], out: Any, now: datetime) -> int:
    regions = [r.strip() for r in args.regions.split(",") if r.strip()] if args.regions else None
    until = _until(args.until, now)
    if regions is not None:
        # The release DAG's `regions` Param lists the fleet's regions: a misspelt one would freeze nothing.
        known = (api.dag_params(names.release_dag(args.app)).get("regions") or {}).get("schema") or {}
        unknown = check_regions(regions, (known.get("items") or {}).get("enum") or [])
        if unknown:
            raise usage_error(f"--regions: {', '.join(unknown)} is not a region of {args.app}")
    reason = _reason(args.reason)
    freeze = Freeze(reason, _who(env), now.isoformat(timespec="seconds"), tuple(regions) if regions else None, until)
    api.set_variable(names.freeze_variable(args.app), freeze.to_json(), freeze.summary())
    _record(api, args.app, freeze.summary(), freeze.by, now)
    print(f"{args.app}: {freeze.line()}", file=out, flush=True)
    return EXIT_OK


def _unfreeze(api: Any, args: argparse.Namespace, env: Mapping[str, str], out: Any, now: datetime) -> int:
    key = names.freeze_variable(args.app)
    current = parse_freeze(api.get_variable(key))
    if current is None:
        print(f"{args.app}: not frozen; nothing to lift", file=out, flush=True)
        return EXIT_OK
    lifted = Freeze(_reason(args.reason), _who(env), now.isoformat(timespec="seconds"), current.regions, lifted=True)
    api.set_variable(key, lifted.to_json(), lifted.summary())
    _record(api, args.app, lifted.summary(), lifted.by, now)
    print(f"{args.app}: unfrozen ({current.scope()}) by {lifted.by}: {lifted.reason}", file=out, flush=True)
    return EXIT_OK


def _pause(api: Any, args: argparse.Namespace, env: Mapping[str, str], out: Any, now: datetime) -> int:
    key, resume = names.pause_variable(args.app), args.command == "resume"
    if resume and parse_pause(api.get_variable(key)) is None:
        print(f"{args.app}: not paused; nothing to resume", file=out, flush=True)
        return EXIT_OK
    entry = Pause(_reason(args.reason), _who(env), now.isoformat(timespec="seconds"), resumed=resume)
    api.set_variable(key, entry.to_json(), entry.summary())
    _record(api, args.app, entry.summary(), entry.by, now)
    print(f"{args.app}: {entry.summary()}", file=out, flush=True)
    return EXIT_OK


def _audit(api: Any, args: argparse.Namespace, env: Mapping[str, str], out: Any, now: datetime) -> int:
    if not 1 <= args.limit <= 1000:
        raise usage_error(f"--limit: {args.limit} is not from 1 to 1000")
    records = api.variables(names.audit_variable_prefix(args.app), limit=args.limit)
    owners = {}
    for entry in api.event_logs([CREATED], limit=1000):
        owners.setdefault(str(_extra(entry.get("extra")).get("key")), entry.get("owner"))
    if not records:
        print(f"nothing recorded for {args.app}", file=out, flush=True)
    for record in records:
        value = _extra(record.get("value"))
        # Airflow's owner is who signed in; without its log entry (pruned), the name the record carries.
        who = owners.get(record["key"]) or f"{value.get('by', '?')} (as recorded)"
        print(f"{value.get('at', '?')}  {who}  {record.get('description')}", file=out, flush=True)
    return EXIT_OK


def _record(api: Any, app: str, summary: str, by: str, now: datetime) -> None:
    """The audit record of an action that took effect: created, never changed (a new key each time)."""
    api.set_variable(*names.audit_record(app, by, now), summary)


def _quarantine(api: Any, args: argparse.Namespace, env: Mapping[str, str], out: Any, now: datetime) -> int:
    if not DIGEST.match(args.digest):
        raise usage_error(f"digest: {args.digest[:80]!r} is not sha256:<64 lowercase hex>")
    key, lift = names.quarantine_variable(args.app, args.digest), args.command == "unquarantine"
    if lift and parse_quarantine(api.get_variable(key), args.digest) is None:
        print(f"{args.app}: {args.digest} is not quarantined; nothing to lift", file=out, flush=True)
        return EXIT_OK
    entry = Quarantine(args.digest, _reason(args.reason), _who(env), now.isoformat(timespec="seconds"), lift)
    api.set_variable(key, entry.to_json(), entry.summary())
    _record(api, args.app, entry.summary(), entry.by, now)
    print(f"{args.app}: {entry.summary()}", file=out, flush=True)
    if not lift and args.roll_back:
        _roll_back(api, args.app, entry, out, now)
    return EXIT_OK


def _roll_back(api: Any, app: str, bad: Quarantine, out: Any, now: datetime) -> None:
    """Release the last good release again: the release DAG changes only the regions not running it
    (those that run the quarantined digest), with the same waves, drains and gates as any release."""

    def quarantined(digest: str) -> bool:
        return parse_quarantine(api.get_variable(names.quarantine_variable(app, digest)), digest) is not None

    good = rollback_target(api.release_events(app), bad.digest, quarantined)
    if good is None:
        print(f"{app}: no earlier good release is recorded; nothing to roll back to", file=out, flush=True)
        return
    conf = build_conf(good["git_sha"], good.get("source_ref") or "main", good["digest"])
    run_id = f"rollback__{bad.digest.removeprefix('sha256:')[:12]}__{now:%Y%m%dT%H%M%S.%fZ}"
    dag_id = names.release_dag(app)
    api.trigger(dag_id, {"logical_date": None, "conf": conf, "dag_run_id": run_id, "note": bad.summary()})
    print(f"{app}: rolling back to {good['digest']} (git {good['git_sha'][:12]}): {dag_id} run {run_id}",
          file=out, flush=True)  # fmt: skip


COMMANDS = {
    "freeze": _freeze, "unfreeze": _unfreeze, "pause": _pause, "resume": _pause,
    "quarantine": _quarantine, "unquarantine": _quarantine, "audit": _audit,
}  # fmt: skip


def _reason(text: str) -> str:
    reason = " ".join(text.split())
    if not reason:
        raise usage_error("--reason: say why (it is shown to every run it stops or holds, and audited)")
    return reason[:500]


def _until(text: str | None, now: datetime) -> str | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise usage_error(f"--until: {text!r} is not an ISO 8601 time, e.g. 2026-12-01T06:00Z") from None
    if when.tzinfo is None:
        raise usage_error(f"--until: {text!r} has no time zone; add Z or +HH:MM")
    if when <= now:
        raise usage_error(f"--until: {text} is already past")
    return when.astimezone(UTC).isoformat(timespec="seconds")


def _who(env: Mapping[str, str]) -> str:
    """Who the freeze names. Airflow's event log records the signed-in user itself; this is the
    same name for the message a stopped run shows (from the user name, or the token's subject)."""
    if env.get(ENV_USERNAME):
        return env[ENV_USERNAME]
    token = env.get(ENV_TOKEN, "")
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims.get("sub") or "token")
    except (IndexError, ValueError):
        return "token"


def _extra(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
