"""The deployment files keep their promises: rules, manifests, compose, dashboard and image.

No Docker engine or Kubernetes cluster runs here, so each file is checked by the tool that
understands it (promtool, hadolint, kubernetes-validate) or by reading it, and the image's
install step is replayed in a fresh virtualenv.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import bcrypt
import pytest
import trustme
import yaml

from exporter import __version__
from exporter.config import DEFAULT_LISTEN_ADDRESS, Shard, load_config, shard_from_hostname
from exporter.simulator import DEFAULT_API_KEY, Simulator
from exporter.web import WebConfig, load_web_config
from tests.helpers import (
    NOT_YET_EXPOSED,
    REPO,
    admits,
    basic,
    free_port,
    lint_problems,
    tool,
    wait_for,
)

DEPLOY = REPO / "deploy"
RULES_DIR = DEPLOY / "prometheus" / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
K8S = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "llamacloud-exporter.json"
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_SCHEMAS = sorted((REPO / "tests" / "schemas").glob("compose-spec*.json"))
DOCKERFILE = REPO / "Dockerfile"
RUNBOOK = DEPLOY / "RUNBOOK.md"
DEFAULT_PORT = int(DEFAULT_LISTEN_ADDRESS.rsplit(":", 1)[1])
CONFIG_PATH = "/etc/llamacloud-exporter/config.yaml"
STATE_DIR = "/var/lib/llamacloud-exporter"
OPERATOR_API = "monitoring.coreos.com/v1"
# Kinds that kubernetes-validate has no schema for; their structure is tested here instead.
NOT_CORE_KINDS = {"ServiceMonitor", "PrometheusRule", "Kustomization"}
K8S_VERSIONS = ("1.29.0", "1.37.0")
WEB_CONFIG_EXAMPLE = DEPLOY / "web-config.example.yml"
WEB_COMPONENT = K8S / "tls-basic-auth"
SHARDED_COMPONENT = K8S / "sharded"
EXAMPLE_PASSWORD = "change-me"  # the placeholder the example hashes


def run(*args: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in RULE_FILES:
        groups.extend(load_yaml(path)["groups"])
    return groups


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    docs: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def k8s_objects() -> dict[str, dict[str, Any]]:
    """The base kustomization's objects by ``name/Kind``."""
    return {
        f"{doc['metadata']['name']}/{doc['kind']}": doc
        for _, doc in k8s_documents()
        if doc["kind"] != "Kustomization"
    }


def k8s_object(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in k8s_documents() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in {K8S}, found {len(found)}"
    return found[0]


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading, which runbook_url annotations point at."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


# --------------------------------------------------------------------------------- Prometheus


def test_rule_files_pass_promtool_check() -> None:
    result = run(tool("promtool"), "check", "rules", *map(str, RULE_FILES))
    assert RULE_FILES, f"no rule files in {RULES_DIR}"
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_prometheus_config_passes_promtool_check() -> None:
    """The compose Prometheus config loads the shipped rules through a relative glob."""
    result = run(tool("promtool"), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    for path in RULE_FILES:
        assert path.name in result.stdout, f"{path.name} is not loaded by prometheus.yml"


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool unit tests in deploy/prometheus/tests"
    promtool = tool("promtool")
    # A file at a time, side by side: promtool evaluates a file's days of rules minute by
    # minute on one core, and the files are independent.
    with ThreadPoolExecutor(len(RULE_TESTS)) as pool:
        results = dict(
            zip(
                RULE_TESTS,
                pool.map(lambda path: run(promtool, "test", "rules", str(path)), RULE_TESTS),
                strict=True,
            )
        )
    failed = {path.name: r.stdout + r.stderr for path, r in results.items() if r.returncode}
    assert not failed, failed


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    """Each alert has a test where it fires and at least two where it must stay quiet."""
    firing: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for path in RULE_TESTS:
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                bucket = firing if check.get("exp_alerts") else quiet
                bucket[check["alertname"]] = bucket.get(check["alertname"], 0) + 1
    for alert in alerts():
        name = alert["alert"]
        assert firing.get(name, 0) >= 1, f"{name}: no unit test where it fires"
        assert quiet.get(name, 0) >= 2, f"{name}: needs unit tests where it stays quiet"


def test_contract_error_rate_is_recorded() -> None:
    """The recorded error rate is the contract's rate(errors[5m]) / rate(runs[5m])."""
    records = {r["record"]: r["expr"] for g in rule_groups() for r in g["rules"] if "record" in r}
    ratio = records["project_id:llamacloud_chat_run_error_ratio:rate5m"]
    errors, runs = (records[name.strip()] for name in ratio.split("/"))
    assert "rate(llamacloud_chat_run_errors_total[5m])" in errors
    assert "rate(llamacloud_chat_runs_total[5m])" in runs
    assert (
        "rate(llamacloud_chat_tokens_total[5m])"
        in records["project_id:llamacloud_chat_tokens:rate5m"]
    )


def test_alerts_cover_the_required_conditions() -> None:
    exprs = {alert["alert"]: " ".join(alert["expr"].split()) for alert in alerts()}
    assert "llamacloud_up == 0" in exprs["LlamaCloudProjectDown"]
    assert (
        "time() - llamacloud_last_successful_poll_timestamp_seconds"
        in exprs["LlamaCloudPollsStale"]
    )
    assert "absent(llamacloud_exporter_build_info)" in exprs["LlamaCloudExporterAbsent"]
    assert "error_ratio" in exprs["LlamaCloudChatErrorRateHigh"]
    assert "tokens:rate1d" in exprs["LlamaCloudTokenBurnHigh"]
    for alert in alerts():
        assert alert.get("for"), f"{alert['alert']}: fires on a single evaluation"
        assert alert["labels"]["severity"] in {"warning", "critical"}


def recorded_ratio_windows() -> dict[str, str]:
    """Window -> expression of each recorded error ratio, ``project_id:...:rate<window>``."""
    prefix = "project_id:llamacloud_chat_run_error_ratio:rate"
    return {
        rule["record"].removeprefix(prefix): " ".join(rule["expr"].split())
        for group in rule_groups()
        for rule in group["rules"]
        if rule.get("record", "").startswith(prefix)
    }


def test_error_budget_burn_is_the_sre_workbooks_multiwindow_alert() -> None:
    """One rule per severity, each the workbook's two (long, short, factor) pairs against the
    project's objective, over recorded ratios that count each project once."""
    windows = recorded_ratio_windows()
    assert set(windows) == {"5m", "30m", "1h", "2h", "6h", "1d", "3d"}
    for window, expr in windows.items():
        if window == "5m":
            continue  # the contract's ratio, from the recorded 5-minute rates
        for counter in ("llamacloud_chat_run_errors_total", "llamacloud_chat_runs_total"):
            assert f"max by (project_id) (rate({counter}[{window}]))" in expr, expr
    burn = [alert for alert in alerts() if alert["alert"] == "LlamaCloudChatErrorBudgetBurn"]
    pair = re.compile(
        r"project_id:llamacloud_chat_run_error_ratio:rate(\w+) / on \(project_id\) "
        r"project_id:llamacloud_chat_run_error_ratio_objective:max > ([\d.]+)"
    )
    found = {}
    for alert in burn:
        expr = " ".join(alert["expr"].split())
        branches = [pair.findall(branch) for branch in expr.split(" or on (project_id) ")]
        found[alert["labels"]["severity"]] = {
            (long, short, float(factor))
            for (long, factor), (short, factor_again) in branches
            if factor == factor_again
        }
    assert found == {
        "critical": {("1h", "5m", 14.4), ("6h", "30m", 6.0)},
        "warning": {("1d", "2h", 3.0), ("3d", "6h", 1.0)},
    }
    (objective,) = [
        " ".join(rule["expr"].split())
        for group in rule_groups()
        for rule in group["rules"]
        if rule.get("record") == "project_id:llamacloud_chat_run_error_ratio_objective:max"
    ]
    assert objective == "max by (project_id) (llamacloud_chat_run_error_ratio_objective)"


def test_every_alert_points_to_a_runbook_section() -> None:
    sections: dict[str, str] = {}
    current = ""
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("## "):
            current = github_anchor(line[3:])
            sections[current] = ""
        elif current:
            sections[current] += line + "\n"
    for alert in alerts():
        annotations = alert["annotations"]
        assert annotations.get("summary") and annotations.get("description"), alert["alert"]
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert (REPO / path).resolve() == RUNBOOK.resolve(), annotations["runbook_url"]
        assert anchor in sections, f"{alert['alert']}: no section #{anchor} in {RUNBOOK.name}"
        for part in ("What it means", "How to check", "How to fix"):
            assert part in sections[anchor], f"RUNBOOK.md#{anchor} lacks '{part}'"


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The exporter's exposition text after one poll of a simulated API (``--once``)."""
    sim = Simulator(projects=2, sessions_per_project=50, seed=1)
    base_url = sim.start()
    try:
        config = tmp_path_factory.mktemp("exposition") / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "llamacloud": {
                        "base_url": base_url,
                        "api_key": DEFAULT_API_KEY,
                        "objectives": {"error_ratio": 0.05},  # the burn-rate panels' data
                    },
                    "projects": [{"id": pid} for pid in sim.project_ids],
                    "discovery": {"organization_id": sim.organization_id},
                }
            )
        )
        once = run(sys.executable, "-m", "exporter", "--once", "--config", str(config))
    finally:
        sim.stop()
    assert once.returncode == 0, once.stderr
    assert "llamacloud_chat_sessions{" in once.stdout
    return once.stdout


def exposed_names(text: str) -> set[str]:
    """Sample names in an exposition text (histograms as their _bucket, _sum and _count)."""
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_exporter_output_passes_promtool_check_metrics(exposition: str) -> None:
    """The exposition text lints clean: naming, units, HELP texts, counters ending in _total."""
    lint = run(tool("promtool"), "check", "metrics", input=exposition)
    assert not lint_problems(lint.stdout + lint.stderr), lint.stdout + lint.stderr


# --------------------------------------------------------------------------------- Kubernetes


def validated_kinds(documents: Iterable[tuple[str, dict[str, Any]]]) -> list[str]:
    """Validate each (name, manifest) strictly against every Kubernetes version's schema the
    package ships (Operator kinds aside); the kinds checked, sorted."""
    try:
        import kubernetes_validate  # type: ignore[import-untyped]
    except ImportError:
        tool("kubernetes-validate")  # skips, or fails in CI, with the install hint
        raise
    checked = []
    for name, doc in documents:
        if doc["kind"] in NOT_CORE_KINDS:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name} ({doc['kind']}, Kubernetes {version}): {exc}")
        checked.append(doc["kind"])
    return sorted(checked)


def test_kubernetes_manifests_validate_against_their_schemas() -> None:
    """Strict validation (unknown fields are errors) with the schemas the package ships."""
    documents = ((path.name, doc) for path, doc in k8s_documents())
    assert validated_kinds(documents) == [
        "ConfigMap",
        "Deployment",
        "Secret",
        "Service",
        "ServiceAccount",
    ]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    deployment = k8s_object("Deployment")
    images = {image["name"] for image in kustomization["images"]}
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] in images


def assert_pod_is_hardened_and_probed(spec: dict[str, Any]) -> dict[str, Any]:
    """The pod template's promises (Deployment and sharded StatefulSet alike); returns its
    container and checks every mount but the state directory's source."""
    pod_security = spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0
    assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind

    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": DEFAULT_PORT}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}

    args = container["args"]
    assert args[args.index("--config") + 1] == CONFIG_PATH
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert (
        volumes[mounts[str(Path(CONFIG_PATH).parent)]]["configMap"]["name"]
        == (k8s_object("ConfigMap")["metadata"]["name"])
    )
    # A read-only root filesystem needs writable mounts where the process writes.
    assert {STATE_DIR, "/tmp"} <= set(mounts)
    assert "emptyDir" in volumes[mounts["/tmp"]]
    secret_refs = [ref["secretRef"]["name"] for ref in container["envFrom"]]
    assert secret_refs == [k8s_object("Secret")["metadata"]["name"]]
    return container


def test_deployment_is_hardened_and_probed() -> None:
    spec = k8s_object("Deployment")["spec"]["template"]["spec"]
    container = assert_pod_is_hardened_and_probed(spec)
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert "emptyDir" in volumes[mounts[STATE_DIR]]


def test_kubernetes_config_is_valid_and_reads_keys_from_the_secret(tmp_path: Path) -> None:
    config_text = k8s_object("ConfigMap")["data"]["config.yaml"]
    secret_keys = set(k8s_object("Secret")["stringData"])
    config = yaml.safe_load(config_text)
    referenced = set(re.findall(r"\$\{(\w+)\}", yaml.safe_dump(config)))
    assert referenced and referenced <= secret_keys, referenced - secret_keys
    assert config["state"]["path"].startswith(STATE_DIR + "/")
    assert config["web"]["listen_address"].endswith(f":{DEFAULT_PORT}")
    path = tmp_path / "config.yaml"
    path.write_text(config_text)
    env = dict(os.environ, **{key: "llx-test" for key in secret_keys})
    result = run(sys.executable, "-m", "exporter", "--check-config", "--config", str(path), env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_and_servicemonitor_select_the_exporter() -> None:
    deployment = k8s_object("Deployment")
    service = k8s_object("Service")
    monitor = k8s_object("ServiceMonitor")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()

    assert monitor["apiVersion"] == OPERATOR_API
    assert monitor["metadata"]["name"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    service_ports = {port["name"]: port for port in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in service_ports
    assert endpoint["path"] == "/metrics"
    assert service_ports[endpoint["port"]]["targetPort"] == "metrics"
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}


def test_prometheusrule_holds_the_same_groups_as_the_rules_file() -> None:
    rule = k8s_object("PrometheusRule")
    assert rule["apiVersion"] == OPERATOR_API
    assert rule["metadata"]["name"]
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == rule_groups(), (
        "deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus/rules: edit both"
    )


# ------------------------------------------------------------------------------ docker compose


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def bind_mounts(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            yield source, target


def compose_variants() -> dict[str, str]:
    """docker-compose.yml as shipped, and with the commented HA pair and web config enabled."""
    text = COMPOSE.read_text()
    return {
        "as shipped": text,
        "HA pair": uncomment_ha_lines(text),
        "web config": uncomment_web_config_lines(text, drop_plain_command=True),
    }


@pytest.mark.parametrize("schema", COMPOSE_SCHEMAS, ids=lambda path: path.stem)
def test_compose_file_follows_the_compose_schema(schema: Path) -> None:
    """Compose v2's schema and v1's (tests/schemas/README.md): a file both take runs with
    ``docker compose`` and with Debian's ``docker-compose``, which refused a top-level name."""
    import jsonschema

    document = json.loads(schema.read_text())
    # Their $schema spell the drafts' URIs in ways jsonschema does not look up: by name, then.
    drafts = {"draft-07": jsonschema.Draft7Validator, "2019-09": jsonschema.Draft201909Validator}
    (draft,) = [cls for name, cls in drafts.items() if name in document["$schema"]]
    validator = draft(document)
    for variant, text in compose_variants().items():
        errors = [error.message for error in validator.iter_errors(yaml.safe_load(text))]
        assert not errors, f"{variant}, against {schema.name}: {errors}"


def test_compose_v1_reads_the_file(tmp_path: Path) -> None:
    """``docker-compose config`` (v1, where installed) takes every variant of the file."""
    compose_v1 = shutil.which("docker-compose")
    if not compose_v1:  # optional: the schemas above hold the file to the same rules
        pytest.skip("docker-compose is not installed")
    for n, (variant, text) in enumerate(compose_variants().items()):
        path = tmp_path / f"docker-compose-{n}.yml"
        path.write_text(text)
        # Relative paths resolve from deploy/, as for the file there.
        command = (compose_v1, "--project-directory", str(DEPLOY), "-f", str(path))
        result = run(*command, "config", "-q", cwd=tmp_path)
        assert result.returncode == 0, f"{variant}: {result.stdout}{result.stderr}"


def test_compose_mounts_exist_in_the_repository() -> None:
    services = compose()["services"]
    assert {"exporter", "prometheus", "alertmanager", "grafana"} <= set(services)
    mounted = 0
    for name, service in services.items():
        for source, _ in bind_mounts(service):
            assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            mounted += 1
        image = service.get("image", "")
        if "build" not in service:
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image"
    assert mounted >= 6
    build = services["exporter"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_exporter_runs_the_demo_unless_told_otherwise() -> None:
    exporter = compose()["services"]["exporter"]
    match = re.fullmatch(r"\$\{LLAMACLOUD_EXPORTER_ARGS:-(.+)\}", exporter["command"])
    assert match, "command must default through ${LLAMACLOUD_EXPORTER_ARGS:-...}"
    default = shlex.split(match.group(1))
    assert "--demo" in default
    assert default[default.index("--web.listen-address") + 1] == f"0.0.0.0:{DEFAULT_PORT}"
    mounts = dict(bind_mounts(exporter))
    assert mounts["./config.yaml"] == CONFIG_PATH
    example = dict(
        line.split("=", 1)
        for line in (DEPLOY / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    real = shlex.split(example["LLAMACLOUD_EXPORTER_ARGS"])
    assert real[real.index("--config") + 1] == CONFIG_PATH
    assert set(exporter["environment"]) == {"LLAMA_CLOUD_API_KEY", "LLAMA_CLOUD_PROJECT_ID"}
    assert set(exporter["environment"]) <= set(example)


def test_compose_exporter_config_is_valid() -> None:
    """deploy/config.yaml passes --check-config and keeps its state on the compose volume."""
    env = dict(
        os.environ,
        LLAMA_CLOUD_API_KEY="llx-test",
        LLAMA_CLOUD_PROJECT_ID="00000000-0000-0000-0000-000000000001",
    )
    config = str(DEPLOY / "config.yaml")
    result = run(sys.executable, "-m", "exporter", "--check-config", "--config", config, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    state = Path(load_yaml(DEPLOY / "config.yaml")["state"]["path"])
    named_volumes = {
        target: source
        for source, target, *_ in (
            v.split(":") for v in compose()["services"]["exporter"]["volumes"]
        )
        if not source.startswith(".")
    }
    assert named_volumes.get(str(state.parent)) in compose()["volumes"]


COMMENTED_KEY = re.compile(r"^(?P<indent>\s*)# (?P<key>\w+): (?P<value>[^\s#]+)$")


def test_compose_config_comments_show_real_keys_with_their_defaults(tmp_path: Path) -> None:
    """Uncommenting the ``# key: value`` lines of deploy/config.yaml changes nothing."""
    env = {
        "LLAMA_CLOUD_API_KEY": "llx-test",
        "LLAMA_CLOUD_PROJECT_ID": "00000000-0000-0000-0000-000000000001",
    }
    lines: list[str] = []
    keys: list[str] = []
    for line in (DEPLOY / "config.yaml").read_text().splitlines():
        match = COMMENTED_KEY.match(line)
        if match:
            keys.append(match["key"])
            line = f"{match['indent']}{match['key']}: {match['value']}"
        lines.append(line)
    assert {"listing", "full_listing_every", "incremental_overlap_seconds"} <= set(keys)
    uncommented = tmp_path / "config.yaml"
    uncommented.write_text("\n".join(lines) + "\n")
    assert load_config(uncommented, env) == load_config(DEPLOY / "config.yaml", env)


def test_compose_prometheus_scrapes_the_exporter_and_alertmanager() -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets = [
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    assert f"exporter:{DEFAULT_PORT}" in targets
    alertmanagers = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanagers == ["alertmanager:9093"]
    mounts = dict(bind_mounts(compose()["services"]["prometheus"]))
    assert mounts["./prometheus/rules"] == "/etc/prometheus/rules"


def test_alertmanager_config() -> None:
    path = DEPLOY / "alertmanager" / "alertmanager.yml"
    config = load_yaml(path)
    receivers = {receiver["name"] for receiver in config["receivers"]}
    assert config["route"]["receiver"] in receivers
    result = run(tool("amtool"), "check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(bind_mounts(grafana))
    provisioning = DEPLOY / "grafana" / "provisioning"
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(provisioning / "dashboards" / "llamacloud.yml")["providers"]
    assert provider["options"]["path"] == mounts["./grafana/dashboards"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{mounts['./grafana/dashboards']}/{DASHBOARD.name}"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def uncomment_ha_lines(text: str) -> str:
    """Uncomment the HA pair in a compose or Prometheus file: each commented ``exporter-b``
    block (its ``# exporter-b...:`` key and the commented lines indented under it) and the
    ``# - exporter-b:PORT`` scrape target."""
    start = re.compile(r"^(?P<indent>\s*)# (?P<yaml>exporter-b[\w-]*:|- exporter-b:\d+)$")
    lines: list[str] = []
    block: re.Pattern[str] | None = None
    for line in text.splitlines():
        body = block.match(line) if block else None
        if body:
            lines.append(body["indent"] + body["yaml"])
            continue
        block = None
        match = start.match(line)
        if match:
            lines.append(match["indent"] + match["yaml"])
            if match["yaml"].endswith(":"):
                indent = re.escape(match["indent"])
                block = re.compile(rf"^(?P<indent>{indent})# (?P<yaml>  +\S.*)$")
            continue
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_compose_ha_pair_comments_fit_together(tmp_path: Path) -> None:
    """Uncommenting ``exporter-b`` gives a second replica like the first, with its own state
    volume and port, scraped in the same job; by default only one exporter runs."""
    assert "exporter-b" not in compose()["services"]
    assert "exporter-b-state" not in compose()["volumes"]

    text = uncomment_ha_lines(COMPOSE.read_text())
    assert text != COMPOSE.read_text()
    data = yaml.safe_load(text)
    services = data["services"]
    first, second = services["exporter"], services["exporter-b"]
    for key in set(first) | set(second):
        if key not in {"volumes", "ports"}:
            assert second.get(key) == first.get(key), f"exporter-b differs in {key}"
    assert dict(bind_mounts(second)) == dict(bind_mounts(first))

    def state_volume(service: dict[str, Any]) -> str:
        (source,) = [v.split(":")[0] for v in service["volumes"] if v.split(":")[1] == STATE_DIR]
        return source

    assert state_volume(second) != state_volume(first), "each replica has its own state file"
    assert state_volume(second) in data["volumes"]
    host_ports = [s["ports"][0].rsplit(":", 1) for s in (first, second)]
    assert host_ports[0][0] != host_ports[1][0]
    assert host_ports[0][1] == host_ports[1][1] == str(DEFAULT_PORT)

    # Prometheus scrapes both in one job, so the rules see replicas of one exporter.
    config_text = uncomment_ha_lines((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config = yaml.safe_load(config_text)
    (job,) = [j for j in config["scrape_configs"] if f"exporter:{DEFAULT_PORT}" in str(j)]
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == [f"exporter:{DEFAULT_PORT}", f"exporter-b:{DEFAULT_PORT}"]
    shutil.copytree(RULES_DIR, tmp_path / "rules")
    (tmp_path / "prometheus.yml").write_text(config_text)
    result = run(tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------ TLS and basic auth


def lay_out_web_config(
    directory: Path, text: str, ca: trustme.CA, leaf: trustme.LeafCert
) -> WebConfig:
    """Write a web config and the certificate files it names (relative to it), then load it."""
    path = directory / "web-config.yml"
    path.write_text(text)
    tls = yaml.safe_load(text).get("tls_server_config") or {}
    pems = {
        "cert_file": b"".join(pem.bytes() for pem in leaf.cert_chain_pems),
        "key_file": leaf.private_key_pem.bytes(),
        "client_ca_file": ca.cert_pem.bytes(),
    }
    for key, pem in pems.items():
        if key in tls:
            assert not Path(tls[key]).is_absolute(), f"{key}: keep it relative to the config"
            (directory / tls[key]).parent.mkdir(parents=True, exist_ok=True)
            (directory / tls[key]).write_bytes(pem)
    return load_web_config(path)


# Commented YAML in web-config.example.yml, as opposed to its prose comments.
COMMENTED_WEB_KEY = re.compile(
    r"^(?P<indent>\s*)# (?P<yaml>\s*((client_\w+|X-[\w-]+): .+|(http_server_config|headers):))$"
)


def test_web_config_example_loads_and_its_hash_is_of_the_placeholder(
    tmp_path: Path, ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    text = WEB_CONFIG_EXAMPLE.read_text()
    web = lay_out_web_config(tmp_path, text, ca, server_cert)
    assert web.tls_enabled and web.auth_enabled
    assert web.describe() == "TLS, basic auth for 1 user"
    (user,) = yaml.safe_load(text)["basic_auth_users"]
    assert admits(web, basic(user, EXAMPLE_PASSWORD))
    assert not admits(web, basic(user, EXAMPLE_PASSWORD + "!"))
    assert not admits(web, None)

    # Uncommenting its commented keys (client certificates, headers) gives a valid config too.
    lines = []
    for line in text.splitlines():
        match = COMMENTED_WEB_KEY.match(line)
        lines.append(match["indent"] + match["yaml"] if match else line)
    uncommented = tmp_path / "uncommented"
    uncommented.mkdir()
    web = lay_out_web_config(uncommented, "\n".join(lines) + "\n", ca, server_cert)
    assert web.describe() == "TLS (client certs: RequireAndVerifyClientCert), basic auth for 1 user"
    assert not web.check_client_cert(None)  # client_allowed_sans: a certificate must name one
    assert web.headers


BCRYPT_RECIPES = (REPO / "README.md", DEPLOY / "README.md", WEB_CONFIG_EXAMPLE)


def test_bcrypt_recipes_make_cost_10_hashes_with_the_venvs_python() -> None:
    """Every documented way to make a hash gives the example's cost (10), and the Python
    one-liner runs with the Python the exporter is installed in: it prints a hash of the
    password it reads."""
    one_liners: list[str] = []
    for path in BCRYPT_RECIPES:
        text = path.read_text()
        for costs in re.findall(r"htpasswd -nBC (\d+)", text):
            assert costs == "10", f"{path.name}: htpasswd -nBC {costs}"
        for line in text.splitlines():
            if "bcrypt.hashpw(" in line:
                one_liners.append(line.lstrip("# ").strip())
    assert one_liners
    for line in one_liners:
        python, flag, code = shlex.split(line)
        assert (python, flag) == (".venv/bin/python", "-c"), line
        assert "gensalt(10)" in code, line
        # No terminal (a session of its own): getpass reads the password from stdin.
        made = subprocess.run(
            [sys.executable, "-c", code],
            input=EXAMPLE_PASSWORD + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            start_new_session=True,
        )
        assert made.returncode == 0, made.stderr
        hashed = made.stdout.strip()
        assert hashed.startswith("$2b$10$"), hashed
        assert bcrypt.checkpw(EXAMPLE_PASSWORD.encode(), hashed.encode())
    example = load_yaml(WEB_CONFIG_EXAMPLE)["basic_auth_users"]
    assert all(value.startswith("$2b$10$") for value in example.values())


def uncomment_web_config_lines(text: str, drop_plain_command: bool = False) -> str:
    """Uncomment the YAML lines of a compose or Prometheus file that enable the web config
    (commented mounts, keys and the alternative ``command``, which replaces the plain one)."""
    pattern = re.compile(
        r"^(?P<indent>\s*)# (?P<yaml>\s*(- \./\S+|(command|LLAMACLOUD_EXPORTER_HEALTHCHECK_URL|"
        r"scheme|ca_file|username|password_file): .+|(tls_config|basic_auth):))$"
    )
    lines = []
    for line in text.splitlines():
        if drop_plain_command and line.strip().startswith("command:"):
            continue
        match = pattern.match(line)
        lines.append(match["indent"] + match["yaml"] if match else line)
    return "\n".join(lines) + "\n"


def mount_for(service: dict[str, Any], path: str) -> tuple[str, str]:
    """The bind mount (source, target) that holds ``path`` inside the container."""
    found = [
        (source, target)
        for source, target in bind_mounts(service)
        if path == target or path.startswith(target.rstrip("/") + "/")
    ]
    assert len(found) == 1, f"{path}: mounted {len(found)} times"
    return found[0]


def test_compose_web_config_comments_fit_together(
    tmp_path: Path, ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    """Uncommenting the ``web config`` lines of docker-compose.yml and prometheus.yml gives an
    exporter that reads the example's layout and a Prometheus that can scrape it."""
    text = COMPOSE.read_text()
    assert "# command:" in text
    services = yaml.safe_load(uncomment_web_config_lines(text, drop_plain_command=True))["services"]
    exporter, prometheus = services["exporter"], services["prometheus"]
    match = re.fullmatch(r"\$\{LLAMACLOUD_EXPORTER_ARGS:-(.+)\}", exporter["command"])
    assert match, exporter["command"]
    args = shlex.split(match.group(1))
    plain_match = re.fullmatch(r"\$\{\w+:-(.+)\}", compose()["services"]["exporter"]["command"])
    assert plain_match
    plain = shlex.split(plain_match[1])
    web_config = args[args.index("--web.config.file") + 1]
    assert args[: len(plain)] == plain, "only --web.config.file is added"

    source, target = mount_for(exporter, web_config)
    assert target == web_config
    assert source == "./" + WEB_CONFIG_EXAMPLE.name.replace(".example", "")
    example = load_yaml(WEB_CONFIG_EXAMPLE)
    for key in ("cert_file", "key_file"):
        in_container = str(Path(web_config).parent / example["tls_server_config"][key])
        mount_for(exporter, in_container)  # a mounted directory holds it

    health = urlsplit(exporter["environment"]["LLAMACLOUD_EXPORTER_HEALTHCHECK_URL"])
    assert (health.scheme, health.port, health.path) == ("https", DEFAULT_PORT, "/healthz")
    env_example = (DEPLOY / ".env.example").read_text()
    (args_line,) = re.findall(
        r"^# LLAMACLOUD_EXPORTER_ARGS=(.*--web\.config\.file.*)$", env_example, re.M
    )
    real = shlex.split(args_line)
    assert real[real.index("--web.config.file") + 1] == web_config
    assert real[real.index("--config") + 1] == CONFIG_PATH

    # Secrets made from the examples stay out of version control.
    ignored = {line for line in (DEPLOY / ".gitignore").read_text().splitlines() if line}
    sources = {s for s, _ in bind_mounts(exporter)} | {s for s, _ in bind_mounts(prometheus)}
    new_sources = sources - {
        s for service in compose()["services"].values() for s, _ in bind_mounts(service)
    }
    for source in new_sources:
        top = "/" + source.removeprefix("./").split("/")[0]
        assert top in ignored or top + "/" in ignored, f"{source} is not in deploy/.gitignore"

    # Prometheus: scheme, CA and password file as mounted, a user the web config knows.
    config_text = uncomment_web_config_lines((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config = yaml.safe_load(config_text)
    (job,) = [j for j in config["scrape_configs"] if f"exporter:{DEFAULT_PORT}" in str(j)]
    assert job["scheme"] == "https"
    assert job["basic_auth"]["username"] in example["basic_auth_users"]
    _, config_target = mount_for(prometheus, "/etc/prometheus/prometheus.yml")
    files = {
        "ca_file": (job["tls_config"]["ca_file"], "tls/ca.crt"),
        "password_file": (job["basic_auth"]["password_file"], "exporter-password"),
    }
    for key, (relative, source_name) in files.items():
        source, target = mount_for(prometheus, str(Path(config_target).parent / relative))
        assert target == str(Path(config_target).parent / relative), key
        assert source == "./" + source_name, key
        written = tmp_path / relative
        written.parent.mkdir(parents=True, exist_ok=True)
        if key == "ca_file":
            written.write_bytes(ca.cert_pem.bytes())
        else:
            written.write_text(EXAMPLE_PASSWORD + "\n")
    shutil.copytree(RULES_DIR, tmp_path / "rules")
    (tmp_path / "prometheus.yml").write_text(config_text)
    result = run(tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


# Kubernetes: the tls-basic-auth component, checked without kustomize by applying its JSON
# patches here (and with it, when kubectl is installed).


def json_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 ``test``, ``add`` and ``replace``: what the component's patches use."""
    document = copy.deepcopy(document)
    for operation in operations:
        op, path = operation["op"], operation["path"]
        assert op in {"test", "add", "replace"}, f"{op}: not handled here"
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
        node: Any = document
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        value = copy.deepcopy(operation.get("value"))
        if isinstance(node, list):
            if op == "add" and last == "-":
                node.append(value)
            elif op == "add":
                node.insert(int(last), value)
            elif op == "replace":
                node[int(last)] = value
            else:
                assert node[int(last)] == value, f"test {path} failed"
        elif op == "test":
            assert node[last] == value, f"test {path} failed"
        else:
            assert op == "add" or last in node, f"replace {path}: nothing there"
            node[last] = value
    return document


def web_component() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(WEB_COMPONENT / "kustomization.yaml")
    return data


def web_component_objects() -> dict[str, dict[str, Any]]:
    """The base's objects with the tls-basic-auth component applied."""
    return with_component(WEB_COMPONENT)


def secret(objects: dict[str, dict[str, Any]], name: str) -> dict[str, str]:
    data: dict[str, str] = objects[f"{name}/Secret"]["stringData"]
    return data


def test_kubernetes_web_component_is_consistent(
    tmp_path: Path, ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    component = web_component()
    assert component["kind"] == "Component"
    assert component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    # Off by default: the base kustomization names it in a comment only.
    base = (K8S / "kustomization.yaml").read_text()
    assert "components" not in load_yaml(K8S / "kustomization.yaml")
    assert re.search(
        r"^# components:\n(#   - [\w-]+\n)*#   - " + WEB_COMPONENT.name + "$", base, re.M
    )
    # The optional Certificate is listed commented.
    assert re.search(
        r"^  # - certificate\.yaml", (WEB_COMPONENT / "kustomization.yaml").read_text(), re.M
    )

    objects = web_component_objects()
    validated_kinds(objects.items())

    spec = objects["llamacloud-exporter/Deployment"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = container["args"]
    web_config = args[args.index("--web.config.file") + 1]
    assert args[args.index("--config") + 1] == CONFIG_PATH
    for probe in ("livenessProbe", "readinessProbe"):
        assert "httpGet" not in container[probe], f"{probe}: basic auth answers it with 401"
        assert container[probe]["tcpSocket"] == {"port": "metrics"}, probe
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    projected = volumes[mounts[str(Path(web_config).parent)]]["projected"]
    assert str(Path(CONFIG_PATH).parent) == str(Path(web_config).parent)

    # Lay the projected volume out in a directory and load it as the exporter would.
    leaf = server_cert
    tls_files = {
        "tls.crt": b"".join(pem.bytes() for pem in leaf.cert_chain_pems),
        "tls.key": leaf.private_key_pem.bytes(),
        "ca.crt": ca.cert_pem.bytes(),
    }
    tls_secret = ""
    for source in projected["sources"]:
        if "configMap" in source:
            assert source["configMap"]["name"] == k8s_object("ConfigMap")["metadata"]["name"]
            (tmp_path / Path(CONFIG_PATH).name).write_text(
                k8s_object("ConfigMap")["data"][Path(CONFIG_PATH).name]
            )
            continue
        name = source["secret"]["name"]
        for item in source["secret"]["items"]:
            target = tmp_path / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            if f"{name}/Secret" in objects:
                target.write_text(secret(objects, name)[item["key"]])
            else:  # the TLS Secret: made by cert-manager or kubectl create secret tls
                tls_secret = name
                target.write_bytes(tls_files[item["key"]])
    assert (tmp_path / Path(CONFIG_PATH).name).exists()
    web = load_web_config(tmp_path / Path(web_config).name)
    assert web.tls_enabled

    # Prometheus scrapes over HTTPS with the scrape Secret's user, which the web config takes.
    (endpoint,) = objects["llamacloud-exporter/ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    auth = endpoint["basicAuth"]
    assert auth["username"]["name"] == auth["password"]["name"]
    scrape = secret(objects, auth["username"]["name"])
    username, password = scrape[auth["username"]["key"]], scrape[auth["password"]["key"]]
    assert admits(web, basic(username, password))
    assert password == EXAMPLE_PASSWORD, "the placeholder the docs tell to replace"
    ca_ref = endpoint["tlsConfig"]["ca"]["secret"]
    assert ca_ref["name"] == tls_secret and ca_ref["key"] in tls_files

    certificate = load_yaml(WEB_COMPONENT / "certificate.yaml")
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert certificate["spec"]["secretName"] == tls_secret
    assert endpoint["tlsConfig"]["serverName"] in certificate["spec"]["dnsNames"]


def test_kubernetes_web_component_builds_with_kustomize(tmp_path: Path) -> None:
    """``kubectl kustomize`` with the component enabled gives what the test above checked."""
    pattern = r"^# (components:|  - " + WEB_COMPONENT.name + ")$"
    built = build_kustomization(tmp_path, lambda text: re.sub(pattern, r"\1", text, flags=re.M))
    expected = web_component_objects()
    for key in expected:
        assert key in built, key
    container = built["llamacloud-exporter/Deployment"]["spec"]["template"]["spec"]
    want = expected["llamacloud-exporter/Deployment"]["spec"]["template"]["spec"]
    assert container["volumes"] == want["volumes"]
    for field in ("args", "livenessProbe", "readinessProbe", "volumeMounts"):
        assert container["containers"][0][field] == want["containers"][0][field], field
    assert (
        built["llamacloud-exporter/ServiceMonitor"]["spec"]["endpoints"]
        == expected["llamacloud-exporter/ServiceMonitor"]["spec"]["endpoints"]
    )
    for key, doc in expected.items():
        if doc["kind"] == "Secret":
            assert built[key]["stringData"] == doc["stringData"], key


# Kubernetes: the sharded component, checked the same way (its patches applied here, and
# kustomize when kubectl is installed).


def sharded_component() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(SHARDED_COMPONENT / "kustomization.yaml")
    return data


def with_component(
    directory: Path, objects: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """The base's objects (or ``objects``) with a component applied as kustomize applies it:
    resources added, JSON patches applied to their targets (kind and name are regular
    expressions), ``$patch: delete`` patches removing theirs."""
    component: dict[str, Any] = load_yaml(directory / "kustomization.yaml")
    objects = copy.deepcopy(objects if objects is not None else k8s_objects())
    for resource in component.get("resources", []):
        for doc in yaml.safe_load_all((directory / resource).read_text()):
            key = doc["metadata"]["name"] + "/" + doc["kind"]
            assert key not in objects, f"{resource} adds {key}, which the base has"
            objects[key] = doc
    for patch in component.get("patches", []):
        if "target" in patch:
            target = patch["target"]
            keys = [
                key
                for key, doc in objects.items()
                if re.fullmatch(target["kind"], doc["kind"])
                and re.fullmatch(target["name"], doc["metadata"]["name"])
            ]
            assert keys, f"{patch['path']}: no {target['kind']} {target['name']}"
            for key in keys:
                objects[key] = json_patch(objects[key], load_yaml(directory / patch["path"]))
        else:
            doc = load_yaml(directory / patch["path"])
            assert doc.pop("$patch") == "delete", patch["path"]
            key = f"{doc['metadata']['name']}/{doc['kind']}"
            assert objects.pop(key, None), f"{patch['path']} deletes {key}, which is not there"
    return objects


def test_kubernetes_sharded_then_tls_basic_auth_gives_shards_with_tls() -> None:
    """sharded, then tls-basic-auth: the StatefulSet serves what the ServiceMonitor scrapes;
    the other order fails (it would scrape plain-HTTP pods over HTTPS)."""
    objects = with_component(WEB_COMPONENT, with_component(SHARDED_COMPONENT))
    assert "llamacloud-exporter/Deployment" not in objects
    spec = objects["llamacloud-exporter/StatefulSet"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert "--web.config.file" in container["args"] and "--shard.from-hostname" in container["args"]
    assert "projected" in spec["volumes"][0]
    (endpoint,) = objects["llamacloud-exporter/ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    with pytest.raises((AssertionError, KeyError)):
        with_component(SHARDED_COMPONENT, with_component(WEB_COMPONENT))


def test_kubernetes_sharded_component_is_consistent() -> None:
    component = sharded_component()
    assert component["kind"] == "Component"
    assert component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    # Off by default: the base kustomization names it in a comment only.
    base = (K8S / "kustomization.yaml").read_text()
    assert "components" not in load_yaml(K8S / "kustomization.yaml")
    assert re.search(r"^# components:\n(#   - [\w-]+\n)*#   - sharded$", base, re.M)

    objects = with_component(SHARDED_COMPONENT)
    assert validated_kinds(objects.items()) == [
        "ConfigMap",
        "Secret",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ]

    (statefulset,) = [doc for doc in objects.values() if doc["kind"] == "StatefulSet"]
    service = objects["llamacloud-exporter/Service"]
    monitor = objects["llamacloud-exporter/ServiceMonitor"]
    spec = statefulset["spec"]
    pod = spec["template"]
    # A headless Service names the pods; the ServiceMonitor scrapes each of them.
    assert spec["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert {"sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "instance"}.items() <= (
        endpoint["relabelings"][0].items()
    )

    container = assert_pod_is_hardened_and_probed(pod["spec"])
    deployment = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == deployment["image"]
    # The Deployment's arguments, then the shard from the pod's hostname out of `replicas`.
    replicas = spec["replicas"]
    assert replicas > 1
    assert container["args"] == [
        *deployment["args"],
        "--shard.from-hostname",
        "--shard.total",
        str(replicas),
    ]
    name = statefulset["metadata"]["name"]
    for ordinal in range(replicas):
        assert shard_from_hostname(f"{name}-{ordinal}", replicas) == Shard(ordinal, replicas)
    with pytest.raises(ValueError, match=r"--shard\.total"):
        shard_from_hostname(f"{name}-{replicas}", replicas)

    # One claim per shard holds the state file; the pod has no other volume of that name.
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    claims = {claim["metadata"]["name"]: claim for claim in spec["volumeClaimTemplates"]}
    state = claims[mounts[STATE_DIR]]
    assert mounts[STATE_DIR] not in {volume["name"] for volume in pod["spec"]["volumes"]}
    assert state["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert state["spec"]["resources"]["requests"]["storage"]
    config = yaml.safe_load(objects["llamacloud-exporter/ConfigMap"]["data"]["config.yaml"])
    assert Path(config["state"]["path"]).parent == Path(STATE_DIR)


def kustomize(tmp_path: Path, edit: Any) -> subprocess.CompletedProcess[str]:
    """``kubectl kustomize`` of a copy of deploy/kubernetes whose kustomization.yaml text
    ``edit`` changed."""
    kubectl = shutil.which("kubectl")
    if not kubectl:  # optional: CI checks the component through its patches alone
        pytest.skip("kubectl is not installed")
    copy_dir = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy_dir)
    kustomization = copy_dir / "kustomization.yaml"
    text = kustomization.read_text()
    edited = edit(text)
    assert edited != text
    kustomization.write_text(edited)
    return run(kubectl, "kustomize", str(copy_dir))


def build_kustomization(tmp_path: Path, edit: Any) -> dict[str, dict[str, Any]]:
    """:func:`kustomize`'s objects by ``name/Kind``."""
    result = kustomize(tmp_path, edit)
    assert result.returncode == 0, result.stderr
    return {
        f"{doc['metadata']['name']}/{doc['kind']}": doc
        for doc in yaml.safe_load_all(result.stdout)
        if doc
    }


def test_kubernetes_sharded_component_builds_with_kustomize(tmp_path: Path) -> None:
    """``kubectl kustomize`` with the component enabled gives what the test above checked."""
    built = build_kustomization(
        tmp_path,
        lambda text: re.sub(r"^# (components:|  - sharded)$", r"\1", text, flags=re.M),
    )
    expected = with_component(SHARDED_COMPONENT)
    assert sorted(built) == sorted(expected)
    statefulset = copy.deepcopy(expected["llamacloud-exporter/StatefulSet"]["spec"])
    (image,) = load_yaml(K8S / "kustomization.yaml")["images"]
    container = statefulset["template"]["spec"]["containers"][0]
    container["image"] = f"{image['name']}:{image['newTag']}"
    assert built["llamacloud-exporter/StatefulSet"]["spec"] == statefulset
    for key in ("llamacloud-exporter/Service", "llamacloud-exporter/ServiceMonitor"):
        assert built[key]["spec"] == expected[key]["spec"], key


def readme_yaml_blocks() -> list[Any]:
    text = (DEPLOY / "README.md").read_text()
    return [
        yaml.safe_load(block) for block in re.findall(r"^```yaml\n(.*?)^```$", text, re.M | re.S)
    ]


def test_kubernetes_sharded_component_with_tls_basic_auth_as_the_readme_says(
    tmp_path: Path,
) -> None:
    """The README's lines for both components give a StatefulSet with TLS and basic auth."""
    (both,) = [
        block
        for block in readme_yaml_blocks()
        if {"tls-basic-auth", "sharded"} <= set(block.get("components", []))
    ]

    def enable(text: str) -> str:
        lines = yaml.safe_dump(both, sort_keys=False)
        return re.sub(r"^# components:\n(#   - [\w-]+\n)+", lambda _: lines, text, flags=re.M)

    built = build_kustomization(tmp_path, enable)
    assert "llamacloud-exporter/Deployment" not in built
    pod = built["llamacloud-exporter/StatefulSet"]["spec"]["template"]["spec"]
    web = web_component_objects()["llamacloud-exporter/Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--web.config.file" in container["args"] and "--shard.from-hostname" in container["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe] == web["containers"][0][probe], probe
    assert pod["volumes"][0] == web["volumes"][0]
    assert built["llamacloud-exporter/ServiceMonitor"]["spec"]["endpoints"][0]["scheme"] == "https"


def test_kubernetes_tls_basic_auth_before_sharded_fails_the_build(tmp_path: Path) -> None:
    """Listed the wrong way round, kustomize fails and says where, instead of rendering a
    ServiceMonitor that scrapes plain-HTTP shards over HTTPS."""
    lines = "components:\n  - tls-basic-auth\n  - sharded\n"
    result = kustomize(
        tmp_path,
        lambda text: re.sub(
            r"^# components:\n(#   - [\w-]+\n)+", lambda _: lines, text, flags=re.M
        ),
    )
    assert result.returncode != 0, result.stdout
    assert "sharded" in result.stderr and "volumes/0/configMap/name" in result.stderr, result.stderr


# ---------------------------------------------------------------------------------- dashboard


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> list[str]:
    return [
        target["expr"]
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    project = variables["project_id"]
    assert project["multi"] and project["includeAll"]
    assert "project_id" in project["definition"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for y in range(grid["y"], grid["y"] + grid["h"]):
            for x in range(grid["x"], grid["x"] + grid["w"]):
                other = cells.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']} overlaps {other}"
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_dashboard_covers_the_issue() -> None:
    """Sessions by status, activity over time, run duration percentiles and exporter health."""
    exprs = "\n".join(dashboard_exprs())
    for needle in (
        "sum by (status) (max by (project_id, status) (llamacloud_chat_sessions",
        "rate(llamacloud_chat_tokens_total",
        "rate(llamacloud_chat_turns_total",
        "rate(llamacloud_chat_runs_total",
        "rate(llamacloud_chat_run_errors_total",
        "histogram_quantile(0.99, sum by (le) (max by (project_id, le) (rate(llamacloud_chat_run_"
        "duration_seconds_bucket",
        "llamacloud_up",
        "llamacloud_poll_duration_seconds",
        "max by (project_id) (llamacloud_poll_pages",
        "max by (project_id) (llamacloud_poll_incremental",
        "sum by (code) (rate(llamacloud_api_requests_total",
        # The error budget: burn rates over 1 and 6 hours, and what remains of 30 days.
        "[1h])) / max by (project_id) (llamacloud_chat_run_error_ratio_objective",
        "[6h])) / max by (project_id) (llamacloud_chat_run_error_ratio_objective",
        "[30d]))) / max by (project_id) (llamacloud_chat_run_error_ratio_objective",
        # The replicas themselves.
        "min by (instance) (llamacloud_config_last_reload_successful",
        "increase(llamacloud_state_save_failures_total",
        'count_values by (job) ("shard_index", llamacloud_shard_index)',
        "max by (job) (llamacloud_shards",
        "max by (instance) (llamacloud_discovery_projects",
        "increase(llamacloud_discovery_errors_total",
        "max by (project_id) (llamacloud_chat_session_reads_pending",
        "increase(llamacloud_log_lines_dropped_total",
    ):
        assert needle in exprs, needle
    # Every per-project query follows the project_id variable; the replicas' own series have
    # no project.
    unlabelled = (
        "llamacloud_api_requests_total",
        "llamacloud_exporter_build_info",
        "llamacloud_config_last_reload_successful",
        "llamacloud_state_save_failures_total",
        "llamacloud_shard_index",
        "llamacloud_shards",
        "llamacloud_discovery_",
        "llamacloud_log_lines_dropped_total",
    )
    for expr in dashboard_exprs():
        if not any(name in expr for name in unlabelled):
            assert 'project_id=~"$project_id"' in expr, expr


def test_dashboard_counts_each_project_once_with_an_ha_pair() -> None:
    """An HA pair reports every project twice: a panel over the chat series takes the max per
    project (as the recording rules do) before it sums, so it shows the same with one
    replica or two."""
    for expr in dashboard_exprs():
        if "llamacloud_chat_" not in expr:
            continue
        for metric in re.findall(r"llamacloud_chat_\w+", expr):
            # The innermost aggregation around each chat series is a max or a min (the same
            # with a value reported twice), before any sum or count.
            before = expr[: expr.index(metric)]
            innermost = re.findall(r"(sum|max|min|count|avg)(?: by \([^)]*\))? ?\(", before)
            assert innermost and innermost[-1] in ("max", "min"), expr


def test_dashboard_metrics_exist(exposition: str) -> None:
    """Every metric a panel queries is one the exporter exposes (recording rules aside)."""
    queried = {
        name
        for expr in dashboard_exprs()
        for name in re.findall(r"(?<![\w:])llamacloud_\w+(?![\w:])", expr)
    }
    missing = queried - exposed_names(exposition) - NOT_YET_EXPOSED
    assert queried and not missing, f"the dashboard queries metrics nobody exposes: {missing}"


def test_metrics_not_yet_exposed_are_not_in_the_collector() -> None:
    """A contract metric the collector names is exposed, and its panels must show data."""
    source = "\n".join(path.read_text() for path in (REPO / "exporter" / "metrics").glob("*.py"))
    for name in NOT_YET_EXPOSED:
        family = name.removesuffix("_total")
        assert f'"{family}"' not in source, f"{name} is exposed now: drop it from NOT_YET_EXPOSED"


def test_dashboard_names_the_listing_mode() -> None:
    """The listing-mode panel reads 1 as incremental and 0 as full, not as bare numbers."""
    (panel,) = [
        panel
        for panel in dashboard()["panels"]
        if any("llamacloud_poll_incremental" in t["expr"] for t in panel.get("targets", []))
    ]
    texts = {
        value: option["text"]
        for mapping in panel["fieldConfig"]["defaults"]["mappings"]
        if mapping["type"] == "value"
        for value, option in mapping["options"].items()
    }
    assert texts == {"1": "incremental", "0": "full"}, panel["title"]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool 2.42 has no parse-only command, but check rules parses every rule expression."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expand_dashboard_vars(expr, ["p1", "p2"])}
        for i, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def expand_dashboard_vars(expr: str, project_ids: list[str], rate_interval: str = "1m") -> str:
    """Substitute variables the way Grafana does for a multi-value regex variable."""
    alternatives = "|".join(re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", pid) for pid in project_ids)
    expanded = expr.replace("$project_id", f"({alternatives})")
    return expanded.replace("$__rate_interval", rate_interval)


# ---------------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def dockerfile() -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped, tagged with stage."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stage = -1
    out = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, " ".join(args.split()), stage))
    return out


def final_stage() -> list[Instruction]:
    instructions = dockerfile()
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def dockerfile_env() -> dict[str, str]:
    """The runtime stage's ENV values (``${VAR}`` references left as they are)."""
    values: dict[str, str] = {}
    for i in final_stage():
        if i.keyword == "ENV":
            values.update(token.split("=", 1) for token in shlex.split(i.args))  # type: ignore[misc]
    return values


def healthcheck_command() -> list[str]:
    (check,) = [i for i in final_stage() if i.keyword == "HEALTHCHECK"]
    _, _, command = check.args.partition("CMD ")
    parsed: list[str] = json.loads(command)
    return parsed


def test_dockerfile_is_multi_stage_on_slim_python() -> None:
    instructions = dockerfile()
    args = dict(i.args.split("=", 1) for i in instructions if i.keyword == "ARG" and i.stage == -1)
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], i.args.split()[0])
        for i in instructions
        if i.keyword == "FROM"
    ]
    assert len(bases) >= 2
    assert all(base.startswith("python:") and "slim" in base for base in bases), bases
    copies = [i.args for i in final_stage() if i.keyword == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), "runtime copies from build"


def test_dockerfile_promises() -> None:
    """Non-root USER, HEALTHCHECK on /healthz, EXPOSE of the default port, console script."""
    stage = final_stage()
    (user,) = [i.args for i in stage if i.keyword == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root USER (runAsNonRoot can check it)"
    assert k8s_object("Deployment")["spec"]["template"]["spec"]["securityContext"][
        "runAsUser"
    ] == int(uid)

    command = healthcheck_command()
    assert command == ["python", "-m", "exporter.healthcheck"]
    url = dockerfile_env()["LLAMACLOUD_EXPORTER_HEALTHCHECK_URL"]
    assert url == f"http://127.0.0.1:{DEFAULT_PORT}/healthz"
    assert not any("curl" in i.args for i in dockerfile())

    exposed = [port for i in stage if i.keyword == "EXPOSE" for port in i.args.split()]
    assert exposed == [str(DEFAULT_PORT)]

    (entrypoint,) = [json.loads(i.args) for i in stage if i.keyword == "ENTRYPOINT"]
    scripts = entry_points(group="console_scripts", name="llamacloud-exporter")
    assert entrypoint == ["llamacloud-exporter"], entrypoint
    assert [script.value for script in scripts] == ["exporter.cli:main"]
    (cmd,) = [json.loads(i.args) for i in stage if i.keyword == "CMD"]
    assert cmd == ["--config", CONFIG_PATH]
    run_lines = " ".join(i.args for i in stage if i.keyword == "RUN")
    assert STATE_DIR in run_lines and str(Path(CONFIG_PATH).parent) in run_lines


def test_dockerfile_builds_offline_and_quietly() -> None:
    """No ``# syntax=`` directive (BuildKit would fetch its frontend image from a registry
    before building), and a user whose fixed UID useradd takes without a warning."""
    first = DOCKERFILE.read_text().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first, re.I), first
    (user_run,) = [i.args for i in final_stage() if i.keyword == "RUN" and "useradd" in i.args]
    (user,) = [i.args for i in final_stage() if i.keyword == "USER"]
    uid, gid = user.split(":")
    # --system with a UID above SYS_UID_MAX (999) warns at every build.
    assert "--system" not in user_run and " -r " not in user_run, user_run
    assert f"--uid {uid}" in user_run and f"groupadd --gid {gid}" in user_run, user_run
    assert "--no-log-init" in user_run, "a high UID without it makes a huge sparse lastlog"


def test_dockerfile_passes_hadolint() -> None:
    result = run(tool("hadolint"), str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last match wins)."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        globs = {glob, glob.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(c, g) for c in candidates for g in globs):
            ignored = not negate
    return ignored


def build_stage_copies() -> list[tuple[list[str], str]]:
    (build_stage,) = {
        i.stage for i in dockerfile() if i.keyword == "COPY" and "--from" not in i.args
    }
    copies = []
    for i in dockerfile():
        if i.stage == build_stage and i.keyword == "COPY":
            *sources, dest = i.args.split()
            copies.append((sources, dest))
    return copies


def test_dockerignore_keeps_the_build_inputs_and_nothing_else() -> None:
    for sources, _ in build_stage_copies():
        for source in sources:
            for path in [REPO / source, *(REPO / source).rglob("*.py")]:
                relative = path.relative_to(REPO).as_posix()
                assert not dockerignored(relative), f"{relative} is copied but .dockerignored"
    for unwanted in (
        ".git/HEAD",
        ".venv/pyvenv.cfg",
        "tests/e2e/test_deploy.py",
        "deploy/README.md",
    ):
        assert dockerignored(unwanted), unwanted
    assert dockerignored("exporter/__pycache__/cli.cpython-311.pyc")


@pytest.mark.slow
def test_dockerfile_install_works_in_a_fresh_venv(tmp_path: Path) -> None:
    """Replays the build stage (COPY, venv, pip install) and the image's entry point.

    Slow (about 20-40 s): it creates a virtualenv and installs the project from the package
    index, as ``docker build`` would.
    """
    instructions = dockerfile()
    build_stage = next(i.stage for i in instructions if i.keyword == "COPY")
    stage = [i for i in instructions if i.stage == build_stage]
    (venv_run,) = [i.args for i in stage if i.keyword == "RUN" and "-m venv" in i.args]
    image_venv = shlex.split(venv_run)[-1]
    (workdir,) = [i.args for i in stage if i.keyword == "WORKDIR"]
    (install,) = [i.args for i in stage if i.keyword == "RUN" and "pip install" in i.args]

    src = tmp_path / workdir.strip("/")
    src.mkdir(parents=True)
    for sources, dest in build_stage_copies():
        for source in sources:
            origin = REPO / source
            assert not dockerignored(source), f"COPY {source} fails: it is .dockerignored"
            target = src / dest / (origin.name if dest.endswith("/") and origin.is_file() else "")
            if origin.is_dir():
                shutil.copytree(
                    origin,
                    src / dest,
                    ignore=lambda d, names: [
                        n
                        for n in names
                        if dockerignored((Path(d) / n).relative_to(REPO).as_posix())
                    ],
                    dirs_exist_ok=True,
                )
            else:
                shutil.copy2(origin, target)

    venv = tmp_path / "venv"
    created = run(sys.executable, "-m", "venv", str(venv))
    assert created.returncode == 0, created.stderr
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    # Docker runs a RUN line with /bin/sh -c, as here.
    installed = run(
        "/bin/sh", "-c", install.replace(image_venv, str(venv)), cwd=src, env=env, timeout=240
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    # The runtime image gets no pip: nothing installs at run time.
    assert not list(venv.glob("lib/python*/site-packages/pip")), "pip is still in the venv"

    (entrypoint,) = [json.loads(i.args) for i in final_stage() if i.keyword == "ENTRYPOINT"]
    version = run(str(venv / "bin" / entrypoint[0]), "--version", cwd=tmp_path, env=env)
    assert version.returncode == 0, version.stderr
    assert __version__ in version.stdout

    # The image's HEALTHCHECK command passes against the running exporter, fails without it.
    health = healthcheck_command()
    python = str(venv / "bin" / health[0])
    port = free_port()
    url = urlsplit(dockerfile_env()["LLAMACLOUD_EXPORTER_HEALTHCHECK_URL"])
    env["LLAMACLOUD_EXPORTER_HEALTHCHECK_URL"] = url._replace(netloc=f"127.0.0.1:{port}").geturl()
    listen = f"127.0.0.1:{port}"
    demo = subprocess.Popen(
        [str(venv / "bin" / entrypoint[0]), "--demo", "--web.listen-address", listen],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def healthy() -> bool:
            assert demo.poll() is None, "the demo exited"
            return run(python, *health[1:], env=env, timeout=30).returncode == 0

        wait_for(healthy, 30, "the HEALTHCHECK to pass", interval=0.2)
    finally:
        demo.terminate()
        demo.wait(timeout=15)
    assert run(python, *health[1:], env=env, timeout=30).returncode != 0


def test_readme_recipe_runs_a_config_against_the_simulator(tmp_path: Path) -> None:
    """The README's recipe as a newcomer runs it: the simulator prints the ids the README
    shows, and the config with LLAMA_CLOUD_BASE_URL passes --check-config and polls."""
    text = (REPO / "README.md").read_text()
    (block,) = [
        b
        for b in re.findall(r"^```sh\n(.*?)^```$", text, re.M | re.S)
        if "LLAMA_CLOUD_BASE_URL" in b
    ]
    lines = block.splitlines()
    start = shlex.split(lines[0].rstrip(" &"))
    assert start[:3] == [".venv/bin/python", "-m", "exporter.simulator"], lines[0]
    printed = [line.removeprefix("# ") for line in lines if line.startswith("# ")]
    (exports,) = [shlex.split(line)[1:] for line in lines if line.startswith("export ")]
    env = dict(os.environ, **dict(pair.split("=", 1) for pair in exports))
    config = tmp_path / "sim-config.yaml"
    config.write_text(block.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0] + "\n")

    args = start[3:]
    args[args.index("--listen") + 1] = f"127.0.0.1:{free_port()}"
    sim = subprocess.Popen(
        [sys.executable, "-m", "exporter.simulator", *args], stdout=subprocess.PIPE, text=True
    )
    try:
        assert sim.stdout is not None
        said = [sim.stdout.readline().strip() for _ in printed]
        url = said[0].rsplit(" ", 1)[1]
        assert said[1:] == printed[1:], "the README shows other ids than the simulator prints"
        env["LLAMA_CLOUD_BASE_URL"] = url  # the README's address, on a free port here
        for mode in ("--check-config", "--once"):
            command = [sys.executable, "-m", "exporter", mode, "--config", str(config)]
            result = run(*command, env=env, cwd=tmp_path)
            assert result.returncode == 0, f"{mode}: {result.stdout[-2000:]}{result.stderr}"
        ids = yaml.safe_load(config.read_text())["projects"]
        for project in ids:
            assert f'llamacloud_up{{project_id="{project["id"]}"}} 1.0' in result.stdout
    finally:
        sim.terminate()
        sim.wait(timeout=15)
