"""The ACR replica check through the real SDKs (azure-mgmt-containerregistry 15.0.0 for
`replications.list`, azure-containerregistry 1.2.0 for `/v2` with ACR's token exchange) against a
contract-checking local server."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import pytest

from fanout.adapters.acr import READY_RECHECK_SECONDS, AcrReplica, AcrReplicas, ReplicaNotFound
from fanout.adapters.registry import RegistryError, RegistryUnusable
from tests.contract.azure_server import ACR_SCOPE, ARM_SCOPE, FakeCredential, Request, Response, arm_error, jwt_like

SUB, RG, REG = "6f1c1d6e-0c3a-4d8e-9a57-2f5e8d1c0a01", "rg-storefront-global", "contosoprod"
REPO = "storefront/web"
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "a" * 64, "size": 2},
        "layers": [],
    }
).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
REPLICATIONS = (
    f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.ContainerRegistry/registries/{REG}/replications"
)
MANIFEST_PATH = rf"/v2/{REPO}/manifests/(?P<ref>[^/]+)"
ACR_ACCESS = "acr-access-token-for-pull"
FAST = {"retry_backoff_factor": 0.01}


def replica(location: str, status: str = "Ready", state: str = "Succeeded") -> dict:
    return {
        "id": f"{REPLICATIONS}/{location}",
        "name": location,
        "type": "Microsoft.ContainerRegistry/registries/replications",
        "location": location,
        "properties": {"provisioningState": state, "status": {"displayStatus": status}, "regionEndpointEnabled": True},
    }


def serve_acr(server, replicas=("eastus2", "westeurope"), manifests=None, status="Ready"):
    """ARM replications plus the registry's token exchange and /v2 manifests, as ACR answers them."""
    manifests = {DIGEST: MANIFEST} if manifests is None else manifests
    server.route(
        "GET",
        REPLICATIONS,
        Response(200, {"value": [replica(r, status if r == "westeurope" else "Ready") for r in replicas]}),
        api_version="2025-11-01",
        token=FakeCredential.token_for(ARM_SCOPE),
    )
    service = f"{REG}.azurecr.io"
    refresh = jwt_like({"exp": int(time.time()) + 3600, "grant_type": "refresh_token"})

    def exchange(req: Request, _m) -> Response:
        assert req.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"), "form expected"
        form = req.form()
        assert form.get("grant_type") == "access_token", f"grant_type {form.get('grant_type')}"
        assert form.get("service") == service, f"service {form.get('service')}"
        assert form.get("access_token") == FakeCredential.token_for(ACR_SCOPE), "AAD token for the ACR audience"
        return Response(200, {"refresh_token": refresh})

    def token(req: Request, _m) -> Response:
        form = req.form()
        assert form.get("grant_type") == "refresh_token", f"grant_type {form.get('grant_type')}"
        assert form.get("refresh_token") == refresh, "the refresh token /oauth2/exchange gave"
        assert form.get("scope") == f"repository:{REPO}:pull", f"scope {form.get('scope')}"
        assert form.get("service") == service
        return Response(200, {"access_token": ACR_ACCESS})

    def manifest(req: Request, m) -> Response:
        accept = req.headers.get("accept", "")
        assert "application/vnd.oci.image.manifest.v1+json" in accept or "*/*" in accept, f"Accept {accept!r}"
        body = manifests.get(m["ref"])
        if body is None:
            return Response(404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})
        # By digest ACR echoes the digest asked for; by tag it names the manifest's own.
        ref = m["ref"] if m["ref"].startswith("sha256:") else "sha256:" + hashlib.sha256(body).hexdigest()
        headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json", "Docker-Content-Digest": ref}
        return Response(200, body, headers)

    server.route("POST", "/oauth2/exchange", exchange, api_version="2021-07-01")
    server.route("POST", "/oauth2/token", token, api_version="2021-07-01")
    challenge = f'Bearer realm="{server.url}/oauth2/token",service="{service}",scope="repository:{REPO}:pull"'
    server.route("GET", MANIFEST_PATH, manifest, token=ACR_ACCESS, challenge=challenge)


def make_replica(server, credential, ca, region="westeurope", with_replicas=True, **options) -> AcrReplica:
    replicas = (
        AcrReplicas(credential, SUB, RG, REG, base_url=server.url, connection_verify=ca, **FAST)
        if with_replicas
        else None
    )
    return AcrReplica(
        credential, server.host, region=region, replicas=replicas, connection_verify=ca, **FAST, **options
    )


def test_replica_serves_the_digest_after_token_exchange(server, credential, ca):
    serve_acr(server)
    assert make_replica(server, credential, ca).has_manifest(REPO, DIGEST) is True
    server.assert_clean()
    order = [(r.method, r.path) for r in server.seen]
    assert order == [
        ("GET", REPLICATIONS),
        ("GET", f"/v2/{REPO}/manifests/{DIGEST}"),  # unauthenticated: answered with the challenge
        ("POST", "/oauth2/exchange"),
        ("POST", "/oauth2/token"),
        ("GET", f"/v2/{REPO}/manifests/{DIGEST}"),
    ]
    assert (ACR_SCOPE,) in credential.scopes and (ARM_SCOPE,) in credential.scopes


def test_unknown_manifest_is_not_there_yet(server, credential, ca):
    serve_acr(server, manifests={})
    assert make_replica(server, credential, ca).has_manifest(REPO, DIGEST) is False
    server.assert_clean()


def test_replica_not_ready_is_not_asked(server, credential, ca):
    serve_acr(server, status="Syncing")
    assert make_replica(server, credential, ca).has_manifest(REPO, DIGEST) is False
    assert not server.calls("GET", MANIFEST_PATH)
    server.assert_clean()


def test_no_replica_in_the_region_is_an_error_naming_it(server, credential, ca):
    serve_acr(server, replicas=("eastus2",))
    with pytest.raises(ReplicaNotFound, match=r"no replica in westeurope .*az acr replication create -r contosoprod"):
        make_replica(server, credential, ca).has_manifest(REPO, DIGEST)


def test_429_with_retry_after_is_waited_out(server, credential, ca):
    serve_acr(server)
    server.fail_next(
        "GET", MANIFEST_PATH, Response(429, {"errors": [{"code": "TOOMANYREQUESTS"}]}, {"Retry-After": "1"})
    )
    started = time.monotonic()
    assert make_replica(server, credential, ca, with_replicas=False).has_manifest(REPO, DIGEST) is True
    assert time.monotonic() - started >= 1.0
    server.assert_clean()


def test_500s_are_retried_then_reported(server, credential, ca):
    serve_acr(server)
    server.fail_next("GET", MANIFEST_PATH, Response(500), Response(503))
    assert make_replica(server, credential, ca, with_replicas=False).has_manifest(REPO, DIGEST) is True
    server.fail_next("GET", MANIFEST_PATH, *[Response(500)] * 5)
    with pytest.raises(RegistryError, match=r"GET manifest storefront/web@sha256:\w+: HTTP 500"):
        make_replica(server, credential, ca, with_replicas=False, retry_total=2).has_manifest(REPO, DIGEST)


def test_refused_aad_token_is_an_error_without_secrets(server, credential, ca):
    serve_acr(server)
    # A service that echoes the token it refused must not get it into our message.
    echoed = {"errors": [{"code": "UNAUTHORIZED", "message": f"bad token {FakeCredential.token_for(ACR_SCOPE)}"}]}
    server.fail_next("POST", "/oauth2/exchange", Response(401, echoed))
    with pytest.raises(RegistryError) as caught:
        make_replica(server, credential, ca, with_replicas=False).has_manifest(REPO, DIGEST)
    assert FakeCredential.token_for(ACR_SCOPE) not in str(caught.value)
    assert caught.value.__context__ is None and caught.value.__cause__ is None


def test_content_that_does_not_hash_to_the_digest_is_refused(server, credential, ca):
    serve_acr(server, manifests={DIGEST: MANIFEST + b" "})
    with pytest.raises(RegistryError, match="does not hash to the digest"):
        make_replica(server, credential, ca, with_replicas=False).has_manifest(REPO, DIGEST)


def test_a_slow_replica_times_out_within_bounds(server, credential, ca):
    serve_acr(server)
    server.fail_next("GET", MANIFEST_PATH, *[Response(200, b"", delay=3)] * 3)
    started = time.monotonic()
    with pytest.raises(RegistryError, match=r"ServiceResponse"):
        make_replica(server, credential, ca, with_replicas=False, timeout=0.5, retry_total=1).has_manifest(REPO, DIGEST)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(("status", "code"), [(403, "AuthorizationFailed"), (404, "ResourceNotFound")])
def test_arm_errors_on_replications_name_the_registry(server, credential, ca, status, code):
    serve_acr(server)
    server.fail_next("GET", REPLICATIONS, arm_error(status, code, "The client does not have authorization"))
    with pytest.raises(
        RegistryError, match=rf"registry 'contosoprod': listing replications failed: HTTP {status} {code}"
    ):
        make_replica(server, credential, ca).has_manifest(REPO, DIGEST)


def test_replicas_by_region(server, credential, ca):
    serve_acr(server, replicas=("eastus2", "westeurope", "West Central US"))
    replicas = AcrReplicas(credential, SUB, RG, REG, base_url=server.url, connection_verify=ca).replicas()
    assert sorted(replicas) == ["eastus2", "westcentralus", "westeurope"]
    assert replicas["westeurope"].ready


REVISION = "org.opencontainers.image.revision"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def labelled_image(labels: dict[str, str]) -> tuple[bytes, str, bytes, str]:
    """(manifest, its digest, config blob, its digest) of an image with `labels`."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": labels}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [],
    }).encode()  # fmt: skip
    return manifest, "sha256:" + hashlib.sha256(manifest).hexdigest(), config, config_digest


def serve_blob(server, digest: str, body: bytes) -> None:
    """GET /v2/<repo>/blobs/<digest> as ACR answers the SDK's ranged reads."""

    def blob(req: Request, _m) -> Response:
        assert (req.headers.get("range") or "").startswith("bytes=0-"), f"Range {req.headers.get('range')!r}"
        headers = {"Content-Range": f"bytes 0-{len(body) - 1}/{len(body)}"}  # the server adds Content-Length
        return Response(206, body, headers)

    challenge = f'Bearer realm="{server.url}/oauth2/token",service="{REG}.azurecr.io",scope="repository:{REPO}:pull"'
    server.route("GET", f"/v2/{REPO}/blobs/{digest}", blob, token=ACR_ACCESS, challenge=challenge)


def test_image_labels_are_read_by_tag_from_the_config_blob(server, credential, ca):
    manifest, digest, config, config_digest = labelled_image({REVISION: COMMIT})
    serve_acr(server, manifests={COMMIT: manifest})
    serve_blob(server, config_digest, config)
    replica = make_replica(server, credential, ca, with_replicas=False)
    assert replica.image_labels(REPO, COMMIT) == (digest, {REVISION: COMMIT})
    server.assert_clean()


def test_image_labels_of_a_missing_tag_are_none(server, credential, ca):
    serve_acr(server, manifests={})
    assert make_replica(server, credential, ca, with_replicas=False).image_labels(REPO, COMMIT) is None
    server.assert_clean()


# -- what a wait may and may not wait out --------------------------------------------------------


def replication_trigger(server, credential, ca, monkeypatch, **kwargs):
    """A ReplicationTrigger for the example fleet's westeurope whose replica client is this test's."""
    from fanout.airflow.hooks import FleetHook
    from fanout.airflow.triggers import ReplicationTrigger
    from tests.fakes import snapshot_of

    monkeypatch.setattr(FleetHook, "registry", lambda self, region: make_replica(server, credential, ca))
    example = Path(__file__).resolve().parents[2] / "include" / "fleets" / "azure-example.yaml"
    return ReplicationTrigger(
        fleet=snapshot_of(example).to_xcom(), region="westeurope", digest=DIGEST, timeout_seconds=30,
        poll_seconds=0.2, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        ("no-replica", r"no replica in westeurope"),
        ("registry-401", r"HTTP 401"),
        ("registry-403", r"HTTP 403"),
        ("arm-403", r"listing replications failed: HTTP 403 AuthorizationFailed"),
    ],
)
def test_a_wait_ends_at_once_on_what_waiting_cannot_fix(server, credential, ca, monkeypatch, fault, why):
    serve_acr(server, replicas=("eastus2",) if fault == "no-replica" else ("eastus2", "westeurope"))
    if fault.startswith("registry-"):
        status = int(fault[-3:])
        server.fail_next("GET", MANIFEST_PATH, *[Response(status, {"errors": [{"code": "DENIED"}]})] * 3)
    if fault == "arm-403":
        server.fail_next("GET", REPLICATIONS, arm_error(403, "AuthorizationFailed", "no read on replications"))
    event = replication_trigger(server, credential, ca, monkeypatch).poll_inline(20)
    assert event is not None and event["status"] == "failed", event
    assert event["waited"] < 5, "ended at once, not at the 30 s deadline"
    assert re.search(why, event["detail"]), event["detail"]


def test_an_unknown_registry_host_ends_the_wait_at_once(server, credential, ca):
    replica_ = AcrReplica(credential, "contosoprod.westeurope.geo.azurecr.invalid", region="westeurope", **FAST)
    with pytest.raises(RegistryUnusable, match="unknown host"):
        replica_.has_manifest(REPO, DIGEST)


def test_not_there_yet_keeps_waiting_and_arm_is_asked_every_30_s(server, credential, ca, monkeypatch):
    serve_acr(server, manifests={})
    event = replication_trigger(server, credential, ca, monkeypatch, started_at=time.time()).poll_inline(2)
    assert event is None, "manifest unknown: still waiting"
    manifests, arm = len(server.calls("GET", MANIFEST_PATH)), len(server.calls("GET", REPLICATIONS))
    assert manifests >= 4, f"{manifests} manifest polls in 2 s"
    assert arm == 1, f"{arm} ARM reads in 2 s: readiness is asked about every {READY_RECHECK_SECONDS:.0f} s"


def test_regional_endpoints_switched_off_are_refused_naming_the_way_out(server, credential, ca):
    off = replica("westeurope")
    off["properties"]["regionEndpointEnabled"] = False
    server.route(
        "GET", REPLICATIONS, Response(200, {"value": [replica("eastus2"), off]}),
        api_version="2025-11-01", token=FakeCredential.token_for(ARM_SCOPE),
    )  # fmt: skip
    replicas = AcrReplicas(credential, SUB, RG, REG, base_url=server.url, connection_verify=ca, **FAST)
    replicas.require_regional_endpoints(["eastus2"])
    with pytest.raises(RegistryUnusable, match=r"replica in westeurope is off.*replica_check: replica-status"):
        replicas.require_regional_endpoints(["eastus2", "westeurope"])
    with pytest.raises(ReplicaNotFound, match="no replica in italynorth"):
        replicas.require_regional_endpoints(["italynorth"])
