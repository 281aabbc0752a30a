#!/usr/bin/env bash
# The official image's entrypoint contract, in short: wait until the database answers, then run
# `bash …` or `python …` as given, or `airflow <command>` (with or without the word `airflow`).
set -euo pipefail
umask 0002
if [[ "${CONNECTION_CHECK_MAX_COUNT:=20}" -gt 0 ]]; then
    for ((try = 1; ; try++)); do
        airflow db check >/dev/null 2>&1 && break
        if ((try >= CONNECTION_CHECK_MAX_COUNT)); then
            airflow db check  # shows why
            exit 1
        fi
        sleep "${CONNECTION_CHECK_SLEEP_TIME:-3}"
    done
fi
case "${1:-}" in
    bash) shift; exec /bin/bash "$@" ;;
    python) shift; exec python "$@" ;;
    airflow) shift ;;
esac
exec airflow "$@"
