"""`make faults`: the fault matrix (issue 19). Each scenario breaks one part of a private local fleet
or of a real Airflow (PostgreSQL, scheduler, triggerer) while a release triggered by the real merge
trigger (`python -m fanout trigger`) is under way, recovers it, and then checks DESIGN.md's promises
from the fleet itself — Helm's records and the Deployments in every cluster, what every edge serves,
the Traffic Manager stand-in's change log, the simulated users' records — never from Fanout's own.

    promises.py   the checks, pure: over a FleetView (what the fleet shows) and the run's outcome
    observe.py    reads a FleetView from the running fleet
    harness.py    the private fleet + Airflow, triggering, watching task states, killing processes
    scenarios.py  the scenarios: when to break what, how to recover, what outcome to expect
    __main__.py   runs them (all, or the ones named) and prints the table
"""
