"""Exec-plugin logins: Fanout runs the plugin, keeps the token in a private kubeconfig, and asks
again whenever the token would not outlive the next operation — the AKS rule, for any kubeconfig."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from fanout.adapters import aks
from fanout.adapters.aks import KubeconfigDir
from fanout.adapters.azure_credentials import AzureAdapterError
from fanout.adapters.kube_exec import ExecCredentialError, exec_kubeconfig, run_exec, uses_exec
from localfleet import tokens

PLUGIN = """
import datetime, json, os, pathlib, sys
count = pathlib.Path(sys.argv[1]); n = int(count.read_text() or 0) + 1 if count.exists() else 1
count.write_text(str(n))
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
assert info["kind"] == "ExecCredential" and info["spec"]["interactive"] is False
expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=float(sys.argv[2]))
print(json.dumps({"apiVersion": info["apiVersion"], "kind": "ExecCredential",
                  "status": {"token": f"token-{n}", "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
"""


def write_kubeconfig(tmp_path: Path, lifetime: float) -> Path:
    script = tmp_path / "plugin.py"
    script.write_text(PLUGIN)
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(script), str(tmp_path / "count"), str(lifetime)],
            "interactiveMode": "Never",
        }
    }
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "east", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "fanout", "user": user}],
        "contexts": [{"name": "east", "context": {"cluster": "east", "user": "fanout", "namespace": "hello"}}],
        "current-context": "east",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    return path


def test_the_plugin_token_replaces_the_exec_user(tmp_path):
    path = write_kubeconfig(tmp_path, lifetime=300)
    assert uses_exec(str(path), "east")
    config, context, expires = exec_kubeconfig(str(path), "east")
    assert context == "east" and config["users"] == [{"name": "fanout", "user": {"token": "token-1"}}]
    assert config["contexts"][0]["context"]["namespace"] == "hello"
    assert 250 < expires - aks.time.time() <= 300


def test_tokens_are_fetched_again_when_they_would_not_outlive_the_operation(tmp_path):
    path = write_kubeconfig(tmp_path, lifetime=8)
    folder = KubeconfigDir(margin_seconds=1)
    produce = lambda _: exec_kubeconfig(str(path), "east")  # noqa: E731
    file, _ = folder.path_for("east", produce, valid_for=4)
    assert folder.path_for("east", produce, valid_for=4)[0] == file  # about 7 s left: enough
    assert yaml.safe_load(Path(file).read_text())["users"][0]["user"]["token"] == "token-1"
    time.sleep(3.5)  # under 5 s left: less than 4 s plus the 1 s margin
    folder.path_for("east", produce, valid_for=4)
    assert yaml.safe_load(Path(file).read_text())["users"][0]["user"]["token"] == "token-2"
    with pytest.raises(AzureAdapterError, match="less than the 11 s"):
        folder.path_for("east", produce, valid_for=10)  # no token of this plugin lives that long


def test_a_failing_plugin_is_named_without_its_output(tmp_path):
    spec = {"command": sys.executable, "args": ["-c", "import sys; print('secret'); sys.exit('no login')"]}
    with pytest.raises(ExecCredentialError, match="no login") as err:
        run_exec(spec)
    assert "secret" not in str(err.value)


def test_local_tokens_expire_and_cannot_be_forged():
    key = b"k" * 32
    token, expires = tokens.mint(key, "fanout", 60, now=1000)
    assert expires == 1060
    assert tokens.verify(key, token, now=1059) == ("fanout", "")
    assert tokens.verify(key, token, now=1060) == (None, "token expired")
    forged = token.replace(".fanout.", ".admin.")
    assert tokens.verify(key, forged, now=1000) == (None, "bad signature")
    assert tokens.verify(b"x" * 32, token, now=1000) == (None, "bad signature")
