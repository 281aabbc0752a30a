"""Before a release changes anything: may Fanout's identity do in each region what a release does?

Fanout runs with a namespace-scoped identity (an AKS RBAC role or a RoleBinding on the app's
namespace) and never creates the namespace: with such an identity `helm --create-namespace` gets
403 even when the namespace exists, and Helm 4 only ignores AlreadyExists (helm/helm#32511).
So `validate` asks each cluster, in the app's namespace:

- does the namespace exist? A server-side dry-run create of a Secret (a permission the release
  needs anyway) answers 404 when it does not: reading the Namespace object needs a cluster-scoped
  grant a namespaced identity usually lacks;
- is every verb in RELEASE_PERMISSIONS allowed? One SelfSubjectAccessReview each (every
  authenticated user may create those: the system:basic-user ClusterRole).
"""

from __future__ import annotations

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

# (API group, resource, verbs) a release uses in the app's namespace. Helm keeps its release
# records in Secrets; it server-side applies (patch) and deletes the chart's objects; `--wait`
# (rollback) and the rollout gate read Deployments, ReplicaSets and Pods. The local fleet's Role is
# built from this list, so a verb Helm needs and this list lacks fails the integration tests.
RELEASE_PERMISSIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("", "secrets", ("get", "list", "watch", "create", "update", "patch", "delete")),
    ("", "services", ("get", "list", "watch", "create", "update", "patch", "delete")),
    ("apps", "deployments", ("get", "list", "watch", "create", "update", "patch", "delete")),
    ("apps", "replicasets", ("get", "list", "watch")),
    ("", "pods", ("get", "list", "watch")),
)


class PreflightError(RuntimeError):
    """The region cannot take a release: the message names region, namespace and what is missing."""


def _name(group: str, resource: str) -> str:
    return f"{resource}.{group}" if group else resource


def missing_permissions(api: client.ApiClient, namespace: str) -> list[str]:
    """`verb resource` for each permission in RELEASE_PERMISSIONS the caller lacks in `namespace`."""
    authz = client.AuthorizationV1Api(api)
    missing = []
    for group, resource, verbs in RELEASE_PERMISSIONS:
        for verb in verbs:
            review = client.V1SelfSubjectAccessReview(
                spec=client.V1SelfSubjectAccessReviewSpec(
                    resource_attributes=client.V1ResourceAttributes(
                        namespace=namespace, verb=verb, group=group, resource=resource
                    )
                )
            )
            result = authz.create_self_subject_access_review(review, _request_timeout=10)
            if not result.status.allowed:
                missing.append(f"{verb} {_name(group, resource)}")
    return missing


def namespace_exists(api: client.ApiClient, namespace: str) -> bool:
    probe = client.V1Secret(metadata=client.V1ObjectMeta(generate_name="fanout-preflight-"))
    try:
        client.CoreV1Api(api).create_namespaced_secret(namespace, probe, dry_run="All", _request_timeout=10)
    except ApiException as err:
        if err.status == 404:
            return False
        if err.status == 403:
            return True  # it exists; the missing create permission is reported by the access reviews
        raise
    return True


def check_release_access(kubeconfig: str, context: str, namespace: str, region: str) -> None:
    """Raise PreflightError naming the region and every missing piece; return when all is there."""
    try:
        api = config.new_client_from_config(config_file=kubeconfig, context=context)
    except Exception as err:  # the kubernetes client raises bare ConfigException and IOError alike
        raise PreflightError(f"{region}: cannot load kubeconfig context {context!r}: {err}") from None
    try:
        if not namespace_exists(api, namespace):
            raise PreflightError(
                f"{region}: namespace '{namespace}' does not exist; Fanout does not create it "
                f"(create it once as a cluster admin: kubectl create namespace {namespace})"
            )
        missing = missing_permissions(api, namespace)
    except ApiException as err:
        raise PreflightError(
            f"{region}: access check in namespace '{namespace}' failed: {err.status} {err.reason}"
        ) from None
    except PreflightError:
        raise
    except Exception as err:  # connection refused, timeouts: the region is unreachable
        raise PreflightError(f"{region}: cluster unreachable: {type(err).__name__}: {err}") from None
    finally:
        api.close()
    if missing and len(missing) == sum(len(verbs) for *_, verbs in RELEASE_PERMISSIONS):
        raise PreflightError(
            f"{region}: the identity Fanout uses has no permission in namespace '{namespace}': the namespace does "
            "not exist or nothing is bound to it there (a namespaced identity cannot tell which); create it once "
            f"as a cluster admin (kubectl create namespace {namespace}) and bind the release Role in it"
        )
    if missing:
        raise PreflightError(
            f"{region}: the identity Fanout uses may not {', '.join(missing)} in namespace '{namespace}'; "
            "grant them with a Role bound to it in that namespace (README: Running against Azure, roles)"
        )
