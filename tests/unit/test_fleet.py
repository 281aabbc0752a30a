"""The fleet file: shipped files validate; each kind of mistake gets one precise line."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fanout.fleet import FleetError, load_fleet, parse_fleet

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "include" / "fleets" / "local.yaml"
AZURE = REPO / "include" / "fleets" / "azure-example.yaml"


@pytest.fixture
def local_data():
    return yaml.safe_load(LOCAL.read_text())


def problems(data, source="f.yaml"):
    with pytest.raises(FleetError) as err:
        parse_fleet(data, source)
    return err.value.problems


def test_shipped_local_fleet_is_valid():
    fleet = load_fleet(LOCAL)
    assert fleet.region_names == ["eastus", "westus", "northeurope", "westeurope"]
    assert {(r.name, r.pair) for r in fleet.regions} == {
        ("eastus", "westus"),
        ("westus", "eastus"),
        ("northeurope", "westeurope"),
        ("westeurope", "northeurope"),
    }
    assert fleet.traffic_manager.kind == "local"
    assert fleet.resolve(fleet.app.chart.path) == REPO / "include" / "charts" / "hello"


def test_shipped_azure_example_is_realistic():
    fleet = load_fleet(AZURE)
    assert len(fleet.regions) >= 6
    assert any(r.pair is None for r in fleet.regions), "needs one unpaired region"
    assert fleet.rollout.canary
    assert all(r.cluster.aks is not None for r in fleet.regions)
    assert fleet.registry.endpoint("westeurope") == "contosoprod.westeurope.geo.azurecr.io"


def test_unknown_pair_names_file_and_field(local_data):
    local_data["regions"][3]["pair"] = "westus9"
    assert problems(local_data) == ["f.yaml: regions[3].pair: 'westus9' is not a region of this fleet"]


def test_asymmetric_pair(local_data):
    local_data["regions"][1]["pair"] = "northeurope"
    lines = problems(local_data)
    assert lines == [
        "f.yaml: regions[0].pair: pairs must be symmetric: 'eastus' names 'westus' but regions[1].pair names "
        "'northeurope'",
        "f.yaml: regions[1].pair: pairs must be symmetric: 'westus' names 'northeurope' but regions[2].pair names "
        "'westeurope'",
    ]


def test_duplicate_region_name(local_data):
    local_data["regions"][1]["name"] = "eastus"
    lines = problems(local_data)
    assert lines[0] == "f.yaml: regions[1].name: 'eastus' appears more than once"


@pytest.mark.parametrize("weight", [0, 1001, -5])
def test_weight_out_of_range(local_data, weight):
    local_data["regions"][2]["endpoint"]["weight"] = weight
    (line,) = problems(local_data)
    assert line.startswith("f.yaml: regions[2].endpoint.weight: Input should be")


def test_every_problem_is_listed_once(local_data):
    data = copy.deepcopy(local_data)
    data["regions"][0]["endpoint"]["weight"] = 0
    data["rollout"]["max_drain_share"] = 1.5
    data["failure_policy"] = "pray"
    data["regions"][1]["cluster"] = {}
    del data["app"]["name"]
    data["gates"]["htp"] = {}
    lines = problems(data)
    assert lines == [
        "f.yaml: app.name: required field is missing",
        "f.yaml: regions[0].endpoint.weight: Input should be greater than or equal to 1",
        "f.yaml: regions[1].cluster: give exactly one of 'aks' or 'kubeconfig'",
        "f.yaml: rollout.max_drain_share: Input should be less than or equal to 1",
        "f.yaml: gates.htp: unknown field (check the spelling)",
        "f.yaml: failure_policy: Input should be 'halt' or 'rollback-all'",
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["rollout"].update(canary=["mars"]), "f.yaml: rollout.canary[0]: 'mars' is not a region"),
        (lambda d: d["registry"].update(home="mars"), "f.yaml: registry.home: 'mars' is not a region"),
        (lambda d: d["regions"][0].update(pair="eastus"), "f.yaml: regions[0].pair: a region cannot be paired"),
        (lambda d: d.update(min_serving_regions=9), "f.yaml: min_serving_regions: 9 is more than the fleet's 4"),
        (lambda d: d["registry"]["endpoints"].pop("westus"), "f.yaml: registry.endpoints: no endpoint for region"),
        (lambda d: d["traffic_manager"].pop("base_url"), "f.yaml: traffic_manager.base_url: required when kind"),
        (lambda d: d["regions"][2].pop("local"), "f.yaml: regions[2].local: required when traffic_manager.kind"),
        (lambda d: d["regions"][2]["endpoint"].update(name="eastus"), "f.yaml: regions[2].endpoint.name: 'eastus'"),
        (lambda d: d["app"].update(name="Hello_World"), "f.yaml: app.name: not a DNS label"),
        (lambda d: d["app"]["chart"].update(oci="oci://x/y"), "f.yaml: app.chart: give exactly one of 'path'"),
        (lambda d: d["registry"].update(kind="acr"), "f.yaml: registry: a registry of kind 'acr' needs 'name'"),
        (lambda d: d["rollout"]["hotfix"].update(soak_seconds=60), "f.yaml: rollout.hotfix.soak_seconds: 60 is longer"),
        (lambda d: d["rollout"]["hotfix"].update(approvers=[]), "f.yaml: rollout.hotfix.approvers: List should have"),
    ],
)
def test_cross_field_rules(local_data, change, expected):
    change(local_data)
    lines = problems(local_data)
    assert len(lines) == 1, lines
    assert lines[0].startswith(expected), lines


def test_unreadable_and_non_yaml_files(tmp_path):
    with pytest.raises(FleetError, match=r"missing.yaml: cannot read"):
        load_fleet(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("app: [unclosed\n")
    with pytest.raises(FleetError, match=r"bad.yaml: not valid YAML \(line 2, column 1\)"):
        load_fleet(bad)
    bad.write_text("- a list\n")
    with pytest.raises(FleetError, match=r"bad.yaml: \(top level\): expected a mapping, got list"):
        load_fleet(bad)


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}"}
    return subprocess.run([sys.executable, "-m", "fanout", *args], capture_output=True, text=True, env=env)


def test_cli_refuses_a_broken_file_with_one_line_per_problem(tmp_path, local_data):
    local_data["app"]["chart"]["path"] = str(REPO / "include/charts/hello")
    local_data["regions"][3]["pair"] = "westus9"
    local_data["regions"][0]["endpoint"]["weight"] = 5000
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(local_data))
    run = run_cli("plan", str(broken))
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.splitlines() == [
        f"{broken}: regions[0].endpoint.weight: Input should be less than or equal to 1000",
    ]  # pydantic errors come first; cross-field rules run only on a well-typed file
    local_data["regions"][0]["endpoint"]["weight"] = 100
    broken.write_text(yaml.safe_dump(local_data))
    run = run_cli("validate", str(broken))
    assert run.returncode == 2
    assert run.stderr.splitlines() == [f"{broken}: regions[3].pair: 'westus9' is not a region of this fleet"]


def test_clusters_pull_acr_images_from_the_login_server():
    acr = load_fleet(AZURE).registry
    assert acr.pull_host("westeurope") == "contosoprod.azurecr.io"  # geo-replication picks the replica
    assert acr.endpoint("westeurope") == "contosoprod.westeurope.geo.azurecr.io"  # what the wait checks
    oci = load_fleet(LOCAL).registry
    assert oci.pull_host("westus") == oci.endpoint("westus") == "127.0.0.1:5102"


@pytest.mark.parametrize(
    ("git", "line"),
    [
        ({"url": "not a url"}, "app.source.git.url: 'not a url' is not an https:// repository URL"),
        ({"url": "file:///srv/git/app.git"}, "app.source.git.url: 'file:///srv/git/app.git' is not an https://"),
        ({"url": "https://"}, "app.source.git.url: 'https://' has no valid host"),
        ({"url": "https://bad host/app.git"}, "app.source.git.url: 'https://bad host/app.git' has no valid host"),
        ({"url": "https://git.example"}, "app.source.git.url: 'https://git.example' must name a repository"),
        ({"url": "https://git.example:x/a.git"}, "app.source.git.url: 'https://git.example:x/a.git' has an invalid"),
        ({"url": "https://me:tok@git.example/a.git"}, "app.source.git.url: has credentials in it; name an Airflow"),
        ({"url": "http://git.example/a.git"}, "app.source.git.url: plain http:// is allowed for loopback"),
        ({"url": "https://git.example/a.git", "path": "../up"}, "app.source.git.path: '../up' must be a relative"),
        ({"url": "https://git.example/a.git", "path": "/abs"}, "app.source.git.path: '/abs' must be a relative"),
        ({"url": "https://git.example/a.git", "conn_id": ""}, "app.source.git.conn_id: String should have at least"),
        ({"url": "https://git.example/a.git", "branch": "x"}, "app.source.git.branch: unknown field"),
    ],
)
def test_every_git_source_mistake_names_its_field(local_data, git, line):
    local_data["app"]["source"] = {"git": git}
    found = problems(local_data)
    assert len(found) == 1 and found[0].startswith(f"f.yaml: {line}"), found


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ("../app", "f.yaml: app.source: expected {git: {url: …, path: …, conn_id: …}} (or {directory: …}"),
        ({}, "f.yaml: app.source: give exactly one of 'git' (the repository) or 'directory' (development only)"),
        (
            {"git": {"url": "https://git.example/a.git"}, "directory": "."},
            "f.yaml: app.source: give exactly one of 'git'",
        ),
    ],
)
def test_the_source_is_a_git_repository_or_an_explicit_development_directory(local_data, source, line):
    local_data["app"]["source"] = source
    found = problems(local_data)
    assert len(found) == 1 and found[0].startswith(line), found


def test_a_git_source_names_its_repository_folder_and_connection():
    fleet = load_fleet(AZURE)
    git = fleet.app.source.git
    assert (git.url, git.context_path, git.conn_id) == (
        "https://github.com/contoso/storefront.git",
        "app",
        "git_storefront",
    )
    assert load_fleet(LOCAL).app.source.git.url.startswith("http://127.0.0.1:")


@pytest.mark.parametrize(("path", "context"), [(".", ""), ("./", ""), ("app/", "app"), ("./.web/x", ".web/x")])
def test_the_build_folder_is_normalised_for_git(path, context):
    from fanout.fleet import GitSource

    assert GitSource(url="https://git.example/a.git", path=path).context_path == context


def test_a_local_token_that_cannot_outlive_a_helm_command_is_refused(local_data):
    local_data["local"] = {"token_lifetime_seconds": 200}  # the local fleet's Helm timeout is 180 s
    with pytest.raises(FleetError) as err:
        parse_fleet(local_data, LOCAL)
    assert err.value.problems == [
        f"{LOCAL}: local.token_lifetime_seconds: 200 is less than gates.rollout_timeout_seconds + 60 = 240: "
        "no token would outlive a Helm command"
    ]


def test_a_local_fleet_cannot_name_a_registry_host_that_does_not_resolve(local_data):
    # The local fleet's registries are loopback addresses, so its replication waits never meet a
    # DNS failure: a name (here one that can never resolve) is refused before any run, naming it.
    local_data["registry"]["endpoints"]["westus"] = "registry-westus.invalid:5102"
    assert problems(local_data) == [
        "f.yaml: registry.endpoints['westus']: registry.insecure (plain http) is allowed for loopback hosts only, "
        "not registry-westus.invalid"
    ]
