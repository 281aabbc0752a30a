"""The host a local Celery worker's tasks record (AIRFLOW__CORE__HOSTNAME_CALLABLE).

Both workers of the local Airflow (localfleet.airflow_stack, Celery mode) run on one machine, so the
fully qualified domain name Airflow records by default would be the same for every task instance.
Each worker's environment names it instead, and the REST API's task instances then say which worker
ran them. Kept apart from airflow_stack so that every task process imports only this.
"""

from __future__ import annotations

import os
import socket

ENV = "LOCALFLEET_WORKER_NAME"


def hostname() -> str:
    """This worker's name, or the machine's name outside a named worker (Airflow's default)."""
    return os.environ.get(ENV) or socket.getfqdn()
