# The Airflow image Fanout runs in (docker-compose.yaml builds it): the official image at the
# pinned Airflow version, Fanout's pinned dependencies, and Helm 4 (the release DAG runs it as a
# subprocess; docker-compose.yaml points FANOUT_HELM at it).
# Built and run by `make compose-test` (tests/compose); its pins are checked against the project
# by tests/unit/test_deploy_files.py. See README "Running Fanout on Airflow".
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
# Go for building Helm: at least the `go` line of Helm's go.mod (1.26.0 for v4.3.1).
ARG GO_VERSION=1.26
# The base images are parameters (docker-compose.yaml passes them on from the environment), so a
# registry mirror can stand in for Docker Hub, as the compose test's local stand-ins do.
ARG AIRFLOW_IMAGE=apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}
ARG GO_IMAGE=golang:${GO_VERSION}-bookworm

# Helm, built from the Go module proxy exactly as `make binaries` builds it for the local fleet
# (localfleet/binaries.py: same module, version and version stamp). Every module it downloads is
# verified against the Go checksum database, so the pin is by content, not only by name, and the
# binary is built for whichever platform the image is built for.
FROM ${GO_IMAGE} AS helm
ARG HELM_VERSION=v4.3.1
RUN CGO_ENABLED=0 GOTOOLCHAIN=local GOBIN=/out go install -trimpath \
      -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
      "helm.sh/helm/v4/cmd/helm@${HELM_VERSION}" \
 && /out/helm version --short

FROM ${AIRFLOW_IMAGE}
COPY --from=helm /out/helm /usr/local/bin/helm
# As the image's airflow user, the way the official image is meant to be extended; requirements.txt
# pins apache-airflow itself, so pip cannot move it away from the base image's version.
COPY requirements.txt constraints.txt /opt/fanout/
RUN pip install --no-cache-dir -r /opt/fanout/requirements.txt -c /opt/fanout/constraints.txt
