# The two commands a newcomer needs are `make demo` and `make test`; both set up
# what they use (the venv, system packages, the local fleet's binaries) on first run.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt constraints.txt | sha1sum | cut -c1-12)
FLEET ?= include/fleets/local.yaml

export PYTHONPATH := $(CURDIR)/plugins:$(CURDIR)
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export FANOUT_FLEETS ?= $(CURDIR)/include/fleets/local.yaml
# Where a fleet file's source and chart paths may point (besides the fleet file's folder and git work tree).
export FANOUT_PROJECT_DIR ?= $(CURDIR)

.PHONY: venv system-packages binaries demo test test-unit lint plan validate fleet-up fleet-status fleet-down fault check test-matrix test-serial bench bench-airflow bench-short-waits bench-release bench-growth bench-metric-gates faults \
	airflow-up airflow-status airflow-env airflow-down compose-packages compose-test

venv: $(STAMP)
$(STAMP): requirements.txt constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setting up $(VENV) (first run only; about a minute)…"
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -c constraints.txt
	@rm -f $(VENV)/.installed-* && touch $@

# Debian packages the local fleet runs: the CNCF registry, skopeo (replication), buildah (builds);
# postgresql for the local Airflow's database (make airflow-up, the e2e tests); git for the
# local fleet's git server (git http-backend) and for fetching the commit a release builds;
# docker-compose (1.29) checks docker-compose.yaml in the tests without a Docker engine;
# prometheus (2.42) is what the metric gates query (localfleet/metrics). Its postinst asks
# invoke-rc.d to start a system-wide prometheus on :9090; without systemd or a runlevel (these
# machines) invoke-rc.d refuses, and policy-rc.d (exit 101, if the image has one) refuses too, so
# none is left running: the fleet starts its own on the fleet file's port, with its state.
# chromium and chromium-driver: the e2e tests open the Fanout page in a real, headless browser.
# redis-server: the broker of the local Airflow's CeleryExecutor mode (make airflow-up EXECUTOR=celery,
# the e2e release tests); like prometheus, its postinst starts no server here, the stack runs its own.
system-packages:
	@missing=$$(for p in docker-registry skopeo buildah postgresql git docker-compose prometheus chromium chromium-driver redis-server; do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

binaries: venv
	@$(PY) -m localfleet.binaries

## The main job: a full release of include/app across the local fleet.
demo: venv system-packages binaries
	@$(PY) -m localfleet.demo --fleet $(FLEET)

## Every test, fastest tier first, stopping at the first failure: unit and contract (fakes, milliseconds),
## DAG integrity, the local fleet's parts, integration on the real local fleet, end-to-end on a real Airflow.
FAST_TIERS := tests/unit tests/contract tests/dags
SLOW_TIERS := tests/e2e tests/integration tests/localfleet
TEST_TIERS := $(FAST_TIERS) $(SLOW_TIERS)
## Every test, in two stages on two pytest-xdist workers (about 26 minutes): a test file's tests
## together on one worker (they build on each other's fleet state), the end-to-end files on one
## worker, first (tests/conftest.py), since two Airflow stacks at once overload two cores.
XDIST := -n 2 --dist loadfile --no-loadscope-reorder
test: venv system-packages binaries
	@$(PY) -m pytest -x $(XDIST) --durations=10 -m "not matrix" $(FAST_TIERS)
	@$(PY) -m pytest -x $(XDIST) --durations=25 -m "not matrix" $(SLOW_TIERS)

## The same tests in one process, in order (about 40 minutes): one log to read top to bottom.
test-serial: venv system-packages binaries
	@$(PY) -m pytest -x --durations=25 -m "not matrix" $(FAST_TIERS) tests/localfleet tests/integration tests/e2e

## The variants make test leaves out (other routing methods, the rollback-all policy, a stuck resolver,
## on_freeze fail, a deploy window a minute away, a quarantined release rolled back).
test-matrix: venv system-packages binaries
	@$(PY) -m pytest -x --durations=10 -m matrix $(TEST_TIERS)

test-unit: venv
	@$(PY) -m pytest -x tests/unit tests/contract tests/dags

# Collecting every test, the compose ones too (they run last in CI): a module that no longer imports,
# or two test modules of one name, fail here in seconds rather than after the whole of `make test`.
lint: venv
	@$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	@$(PY) -m pytest --collect-only -q $(TEST_TIERS) tests/compose -p no:cacheprovider >/dev/null

plan: venv
	@$(PY) -m fanout plan $(FLEET) $(if $(REGIONS),--regions $(REGIONS))

validate: venv
	@$(PY) -m fanout validate $(FLEET)

fleet-up: venv system-packages binaries
	@$(PY) -m localfleet --fleet $(FLEET) up

fleet-status: venv
	@$(PY) -m localfleet --fleet $(FLEET) status

fleet-down: venv
	@$(PY) -m localfleet --fleet $(FLEET) down

fault: venv
	@$(PY) -m localfleet --fleet $(FLEET) fault $(ARGS)

## Run the fleet consistency check once (`airflow dags test`) and print its report.
check: venv
	@$(PY) -m airflow db migrate >/dev/null
	@set -o pipefail; FANOUT_FLEETS=$(abspath $(FLEET)) $(PY) -m airflow dags test \
	  fleet_consistency_$$($(PY) -c 'import sys; from fanout.fleet import load_fleet; print(load_fleet(sys.argv[1]).app.name)' $(FLEET)) 2>&1 \
	  | tee $(AIRFLOW_HOME)/last-check.log \
	  | sed -n 's/^[^ ]* \[[a-z ]*\] \(.*\) \[airflow\.task\.operators\.fanout\.airflow\.consistency\.\(Classify\|Repair\)FleetOperator\] .*/\1/p' \
	  | sed 's/ *$$//'

## Figures for the local fleet: start-up time, idle memory, one release.
bench: venv system-packages binaries
	@$(PY) -m localfleet.bench --release

## Worker slots busy while release runs wait, on a private real Airflow (prints figures).
bench-airflow: venv system-packages binaries
	@$(PY) -m localfleet.bench_airflow

## Waits whose trigger fires within seconds of the deferral, on a private real Airflow: resumed on a
## worker (apache/airflow#72716 fails some) versus ended by the trigger (fanout.airflow.waits).
bench-short-waits: venv system-packages
	@$(PY) -m localfleet.short_waits

## Fanout's release vs a plain script on a private fleet + real Airflow; the 4-region fleet, then a
## generated 12-region one (REPEAT=rounds per side), the DAG-file parse for 60 regions, the planner at 200.
REPEAT ?= 2
bench-release: venv system-packages binaries
	@$(PY) -m localfleet.bench_release --repeat $(REPEAT)
	@$(PY) -m localfleet.bench_release --repeat $(REPEAT) --regions 12
	@$(PY) -m localfleet.bench_parse
	@$(PY) -m localfleet.bench_planner

## How a release's cost grows with the fleet: one release each to generated fleets of SIZES regions
## on a private real Airflow; release time, unavoidable part, overhead per task, CPU, peak memory.
SIZES ?= 4,8,12
bench-growth: venv system-packages binaries
	@$(PY) -m localfleet.bench_growth --sizes $(SIZES) --plain

## The metric gates' comparison: false alarms over good-build windows, and a slow build let through.
bench-metric-gates: venv system-packages binaries
	@$(PY) -m localfleet.bench_metric_gates --windows $(or $(WINDOWS),20)

## The fault matrix on a private fleet + real Airflow: helm killed mid-upgrade, scheduler / triggerer
## killed, PostgreSQL restarted, Traffic Manager 429/500 storms, home registry down, a region's API
## server down, a replica that never syncs, ten merges in one release; each scenario's promises checked
## from the fleet, printed as a table (exit 1 if any broke). ARGS="helm-sigkill …" runs only those.
faults: venv system-packages binaries
	@$(PY) -m localfleet.fault_matrix $(ARGS)

## A real Airflow (PostgreSQL, api-server, scheduler, dag-processor, triggerer) on the local fleet;
## EXECUTOR=celery adds Redis and two Celery workers (CeleryExecutor), EXECUTOR=local goes back.
airflow-up: fleet-up
	@$(PY) -m localfleet.airflow_stack --fleet $(FLEET) up $(if $(EXECUTOR),--executor $(EXECUTOR))

airflow-status: venv
	@$(PY) -m localfleet.airflow_stack --fleet $(FLEET) status

## Prints the FANOUT_AIRFLOW_* settings `fanout trigger` reads: eval $$(make -s airflow-env)
airflow-env: venv
	@$(PY) -m localfleet.airflow_stack --fleet $(FLEET) env

airflow-down: venv
	@$(PY) -m localfleet.airflow_stack --fleet $(FLEET) down

# Only for `make compose-test`: a Docker engine the test starts by itself (docker.io), and
# mmdebstrap for the Debian root filesystems its local base images start from (no image registry
# is reachable here). Kept apart from system-packages so `make test` does not pull in an engine.
compose-packages:
	@missing=$$(for p in docker.io mmdebstrap docker-compose; do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

## docker-compose.yaml and the Dockerfile on a real Docker engine, releasing to a private local fleet.
compose-test: venv system-packages compose-packages binaries
	@$(PY) -m pytest -m compose tests/compose -p no:cacheprovider -s
