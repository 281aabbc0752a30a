"""What localfleet.kube writes to disk and says over HTTP: the state layout, each region's
credentials (service-account key, admin token), kubeconfigs, kwok's stage file, and the
requests that ask etcd, an apiserver or a controller whether it is ready, and create nodes.

Nothing here starts or stops a process; that is localfleet.kube's job (via localfleet.procs).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from localfleet.binaries import KUBERNETES_VERSION, KWOK_VERSION

LOOPBACK = "127.0.0.1"

# The kwok stages we play: nodes become Ready and keep a lease, pods become
# Ready, Job pods complete, deleted pods go away.
_STAGE_FILES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)


class KubeError(RuntimeError):
    """A control-plane process failed to start or become ready."""


# --------------------------------------------------------------------------- paths


def region_dir(state_dir: Path, name: str) -> Path:
    return Path(state_dir) / "regions" / name


def etcd_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "etcd"


def admin_kubeconfig_beside(fanout_kubeconfig: Path) -> Path:
    """The merged admin kubeconfig of a local fleet, kept beside the one Fanout uses."""
    return Path(fanout_kubeconfig).with_name("admin.kubeconfig")


def admin_kubeconfig(state_dir: Path, name: str) -> Path:
    return region_dir(state_dir, name) / "admin.kubeconfig"


# ---------------------------------------------------------------------- credentials


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise KubeError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def ensure_credentials(d: Path) -> None:
    """The region's service-account key and admin token, made once and kept across restarts."""
    (d / "pki").mkdir(parents=True, exist_ok=True)
    sa_key = d / "pki" / "sa.key"
    if not sa_key.exists():
        # One RSA key signs service-account tokens (apiserver, controller
        # manager) and verifies them (apiserver).
        tmp = sa_key.with_suffix(".tmp")
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(tmp))
        tmp.rename(sa_key)
    tokens = d / "token.csv"
    if not tokens.exists():
        tokens.write_text(f"{secrets.token_hex(24)},admin,admin,system:masters\n")
        tokens.chmod(0o600)


def admin_token(d: Path) -> str:
    return (d / "token.csv").read_text().split(",", 1)[0]


def serving_ca(d: Path) -> str:
    # kube-apiserver writes its self-signed cert followed by the CA that
    # signed it; clients must trust the CA, not the leaf.
    pem = (d / "pki" / "apiserver.crt").read_text()
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", pem, re.S)
    if not blocks:
        raise KubeError(f"no certificate in {d / 'pki' / 'apiserver.crt'}")
    return blocks[-1]


def kubeconfig(entries: list[tuple[str, str, str, str]], current: str) -> dict:
    """entries: (context name, server, CA PEM, token)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca.encode()).decode(),
                },
            }
            for name, server, ca, _ in entries
        ],
        "users": [{"name": f"{name}-admin", "user": {"token": token}} for name, _, _, token in entries],
        "contexts": [
            {"name": name, "context": {"cluster": name, "user": f"{name}-admin", "namespace": "default"}}
            for name, *_ in entries
        ],
        "current-context": current,
    }


def write_private(path: Path, content: str) -> None:
    # Kubeconfigs carry admin tokens: never world-readable, never half-written.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content)
    tmp.replace(path)


# ---------------------------------------------------------------------- kwok stages


def kwok_stages(state_dir: Path) -> Path:
    """Write kwok's Stage objects, copied from kwok's module in the Go module cache."""
    target = Path(state_dir) / "kwok-stages.yaml"
    if target.exists():
        return target
    env = dict(os.environ, GOFLAGS="", GOWORK="off", GOTOOLCHAIN="local")
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"sigs.k8s.io/kwok@{KWOK_VERSION}"],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
    )
    try:
        module_dir = Path(json.loads(proc.stdout)["Dir"])
    except (ValueError, KeyError) as exc:
        raise KubeError(f"cannot locate kwok {KWOK_VERSION} in the Go module cache: {proc.stderr.strip()}") from exc
    docs = [(module_dir / f).read_text().strip() for f in _STAGE_FILES]
    write_private(target, "\n---\n".join(docs) + "\n")
    return target


def never_ready_stages(stages: Path) -> Path:
    """The stages without pod-ready: new pods are scheduled but never become Ready."""
    target = stages.with_name("kwok-stages-never-ready.yaml")
    docs = stages.read_text().split("\n---\n")
    kept = [doc for doc in docs if not re.search(r"^  name: pod-ready$", doc, re.MULTILINE)]
    if len(kept) != len(docs) - 1:
        raise KubeError(f"{stages}: expected exactly one pod-ready stage")
    write_private(target, "\n---\n".join(kept) + "\n")
    return target


# ----------------------------------------------------------------------------- http


def _insecure_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def http(
    url: str,
    *,
    token: str | None = None,
    ca: str | None = None,
    method: str = "GET",
    body: dict | None = None,
    timeout: float = 5.0,
    content_type: str = "application/json",
) -> tuple[int, bytes]:
    """(status, body); status 0 means the server could not be reached."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = content_type
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    # Proxies are bypassed on purpose: every target is on loopback.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if url.startswith("https:"):
        ctx = ssl.create_default_context(cadata=ca) if ca else _insecure_ctx()
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return 0, b""


def api(server: str, d: Path, path: str, **kw: object) -> tuple[int, dict]:
    """A request to the region's apiserver as its admin; the JSON body ({} if none)."""
    status, body = http(f"{server}{path}", token=admin_token(d), ca=serving_ca(d), **kw)  # type: ignore[arg-type]
    try:
        return status, json.loads(body) if body else {}
    except ValueError:
        return status, {}


def etcd_healthy(url: str) -> bool:
    status, body = http(f"{url}/health", timeout=2)
    if status != 200:
        return False
    try:
        return json.loads(body).get("health") == "true"
    except ValueError:
        return False


def apiserver_ready(server: str, d: Path) -> bool:
    try:
        ca = serving_ca(d)
    except (OSError, KubeError):
        return False
    status, body = http(f"{server}/readyz", token=admin_token(d), ca=ca, timeout=3)
    return status == 200 and body.strip() == b"ok"


def healthz(port: int) -> bool:
    status, body = http(f"https://{LOOPBACK}:{port}/healthz", timeout=2)
    return status == 200 and body.strip() == b"ok"


# ---------------------------------------------------------------------------- nodes


def _node_schedulable(node: dict) -> bool:
    conds = {c.get("type"): c.get("status") for c in node.get("status", {}).get("conditions", [])}
    taints = node.get("spec", {}).get("taints") or []
    return conds.get("Ready") == "True" and not any(t.get("effect") in ("NoSchedule", "NoExecute") for t in taints)


def _node_manifest(region: str, name: str) -> dict:
    resources = {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "500Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            # kwok only plays nodes it is told are fake; no kwok taint, so
            # ordinary charts schedule here without tolerations.
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "topology.kubernetes.io/region": region,
            },
        },
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {"kubeletVersion": KUBERNETES_VERSION, "operatingSystem": "linux", "architecture": "amd64"},
        },
    }


def ensure_nodes(region: str, server: str, d: Path, count: int) -> None:
    """Nodes `<region>-node-0` … `-<count-1>` exist (kwok makes them Ready)."""
    for i in range(count):
        name = f"{region}-node-{i}"
        status, body = api(server, d, "/api/v1/nodes", method="POST", body=_node_manifest(region, name))
        if status not in (201, 409):
            raise KubeError(f"region {region}: creating node {name} failed ({status}): {body}")


def schedulable_nodes(server: str, d: Path) -> tuple[int, int]:
    """(Ready and untainted nodes, all nodes); (0, 0) if the apiserver does not answer."""
    status, body = api(server, d, "/api/v1/nodes", timeout=3)
    if status != 200:
        return 0, 0
    items = body.get("items", [])
    return sum(_node_schedulable(n) for n in items), len(items)


# ---------------------------------------------------------------------- identities


def write_token_webhook(d: Path, url: str) -> Path:
    """The apiserver's token webhook config (kubeconfig format): tokens it does not know itself
    (anything but the admin's) are checked by the local token service, localfleet.tokens."""
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "tokens", "cluster": {"server": f"{url}/authenticate"}}],
        "users": [{"name": "apiserver", "user": {}}],
        "contexts": [{"name": "tokens", "context": {"cluster": "tokens", "user": "apiserver"}}],
        "current-context": "tokens",
    }
    path = d / "token-webhook.kubeconfig"
    write_private(path, json.dumps(cfg, indent=2) + "\n")
    return path


def apply(server: str, d: Path, path: str, obj: dict) -> None:
    """Server-side apply `obj` at `path` as the admin: creates or updates, idempotent."""
    status, body = http(
        f"{server}{path}?fieldManager=localfleet&force=true", token=admin_token(d), ca=serving_ca(d),
        method="PATCH", body=obj, content_type="application/apply-patch+yaml",
    )  # fmt: skip
    if status not in (200, 201):
        raise KubeError(f"applying {obj['kind']} {obj['metadata']['name']} failed ({status}): {body[:300]!r}")


def grant_namespace(
    server: str, d: Path, namespace: str, user: str, rules: list[tuple[str, str, tuple[str, ...]]]
) -> None:
    """What a cluster admin does once per cluster: create the app's namespace and bind `user` to a
    Role holding `rules` (group, resource, verbs) there, and nothing cluster-wide."""
    apply(server, d, f"/api/v1/namespaces/{namespace}", {"apiVersion": "v1", "kind": "Namespace",
                                                         "metadata": {"name": namespace}})  # fmt: skip
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "fanout-release", "namespace": namespace},
        "rules": [{"apiGroups": [g], "resources": [r], "verbs": list(v)} for g, r, v in rules],
    }
    apply(server, d, f"{rbac}/roles/fanout-release", role)
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "fanout-release", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "fanout-release"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    apply(server, d, f"{rbac}/rolebindings/fanout-release", binding)
