# The Airflow image Fanout runs in: the official image at the pinned Airflow version,
# Fanout's pinned dependencies, and Helm 4 (the release DAG calls it as a subprocess).
# Not built on the development machines (no Docker engine there); see README "Running Fanout on Airflow".
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

USER root
ARG HELM_VERSION=v4.3.1
RUN curl -fsSL "https://get.helm.sh/helm-${HELM_VERSION}-linux-amd64.tar.gz" \
    | tar -xz -C /usr/local/bin --strip-components=1 linux-amd64/helm \
 && helm version --short

USER airflow
COPY requirements.txt constraints.txt /opt/fanout/
RUN pip install --no-cache-dir -r /opt/fanout/requirements.txt -c /opt/fanout/constraints.txt
