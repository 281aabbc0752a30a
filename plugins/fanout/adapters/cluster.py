"""One region's Kubernetes cluster, reached through a kubeconfig file and context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fanout.policy import app_container

# The kubernetes client takes seconds to import; it is imported when a cluster is first asked.


class ClusterError(RuntimeError):
    pass


@dataclass(frozen=True)
class Cluster:
    kubeconfig: str
    context: str
    request_timeout: float = 10.0

    def _api(self) -> Any:
        from kubernetes import config

        try:
            return config.new_client_from_config(config_file=self.kubeconfig, context=self.context)
        except Exception as err:  # the kubernetes client raises bare ConfigException and IOError alike
            raise ClusterError(f"cannot load kubeconfig context {self.context!r}: {err}") from None

    def _apps(self) -> Any:
        from kubernetes import client

        return client.AppsV1Api(self._api())

    def deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Deployment as the API returns it (camelCase keys), or None if absent."""
        from kubernetes.client.exceptions import ApiException

        apps = self._apps()
        try:
            obj = apps.read_namespaced_deployment(name, namespace, _request_timeout=self.request_timeout)
            return apps.api_client.sanitize_for_serialization(obj)
        except ApiException as err:
            if err.status == 404:
                return None
            raise ClusterError(
                f"{self.context}: reading deployment {namespace}/{name}: {err.status} {err.reason}"
            ) from None
        except Exception as err:  # connection refused, timeouts: the region is unreachable
            raise ClusterError(f"{self.context}: cluster unreachable: {type(err).__name__}: {err}") from None
        finally:
            apps.api_client.close()

    def pod_images(self, namespace: str, labels: dict[str, str]) -> list[str]:
        """The app container's image of every live pod matching `labels` (pods being deleted excluded)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        api = self._api()
        try:
            pods = client.CoreV1Api(api).list_namespaced_pod(
                namespace,
                label_selector=",".join(f"{k}={v}" for k, v in sorted(labels.items())),
                _request_timeout=self.request_timeout,
            )
            listed = [api.sanitize_for_serialization(p) for p in pods.items]
        except ApiException as err:
            raise ClusterError(f"{self.context}: listing pods in {namespace}: {err.status} {err.reason}") from None
        except Exception as err:  # connection refused, timeouts: the region is unreachable
            raise ClusterError(f"{self.context}: cluster unreachable: {type(err).__name__}: {err}") from None
        finally:
            api.close()
        live = [p for p in listed if not p.get("metadata", {}).get("deletionTimestamp")]
        return [app_container(p.get("spec", {}).get("containers") or []).get("image", "") for p in live]
