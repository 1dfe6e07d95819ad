"""The deployment kit under deploy/: systemd unit, container image, Kubernetes manifests,
Prometheus rules and the Grafana dashboard, checked against the tools and a real daemon."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from packaging.requirements import Requirement

from nodevigil.core.config import parse_config
from tests.failover.daemons import free_port, poll_until

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "nodevigil.service"
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
KUBERNETES = DEPLOY / "kubernetes"
RULES = DEPLOY / "prometheus" / "nodevigil-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "nodevigil-rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "nodevigil.json"
OPERATIONS = ROOT / "docs" / "operations.md"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
RUNBOOK_BASE = "https://nodevigil.invalid/docs"  # the placeholder the rules ship with
CONFIG_PATH = "/etc/nodevigil/nodevigil.yaml"
STATE_DIR = "/var/lib/nodevigil"
API_PORT = 9470
PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
KUBECTL = shutil.which("kubectl")


# --- systemd ------------------------------------------------------------------------------


def unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    """``[Section]`` -> key -> every value (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_is_a_hardened_notify_service() -> None:
    service = unit_directives(UNIT.read_text())["Service"]

    def one(key: str) -> str:
        assert key in service, f"[Service] has no {key}="
        return service[key][-1]

    assert one("Type") == "notify"
    assert one("WatchdogSec") not in ("", "0")
    assert one("ExecStart").endswith(f"nodevigil run -c {CONFIG_PATH}")
    assert one("ExecStartPre").endswith(f"nodevigil check-config -c {CONFIG_PATH}")
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("StateDirectory") == "nodevigil"  # /var/lib/nodevigil
    assert one("User") not in ("", "root")
    assert "haproxy" in one("SupplementaryGroups").split()
    assert one("ProtectSystem") == "strict"
    assert one("NoNewPrivileges") == "yes"
    assert one("CapabilityBoundingSet") == ""
    assert "AF_UNIX" in one("RestrictAddressFamilies").split()  # the HAProxy admin socket
    for key in ("ProtectHome", "PrivateTmp", "PrivateDevices", "RestrictNamespaces"):
        assert one(key) == "yes", key


@pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is missing: install the Debian package systemd"
)
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists: point it at this checkout's console script.
    script = Path(sys.executable).parent / "nodevigil"
    assert script.exists(), f"{script} is missing: pip install -e ."
    unit = tmp_path / "nodevigil.service"
    unit.write_text(UNIT.read_text().replace("/opt/nodevigil/bin/nodevigil", str(script)))
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", "--recursive-errors=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and output.strip() == "", output


# --- container image ----------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def test_dockerfile_runs_nodevigil_as_non_root_with_state_on_a_volume() -> None:
    steps = dockerfile_instructions(DOCKERFILE.read_text())
    froms = [i for i, (k, _) in enumerate(steps) if k == "FROM"]
    final = steps[froms[-1] :]
    kinds = {k for k, _ in final}
    defaults = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], final[0][1]).split()[0]
    assert "python" in base and "slim" in base, base
    users = [a for k, a in final if k == "USER"]
    assert users, "the final stage sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    volumes = [json.loads(a) for k, a in final if k == "VOLUME"]
    assert [STATE_DIR] in volumes
    assert ("EXPOSE", str(API_PORT)) in final
    health = [a for k, a in final if k == "HEALTHCHECK"]
    assert len(health) == 1 and f"127.0.0.1:{API_PORT}/healthz" in health[0]
    assert {"ENTRYPOINT", "CMD"} <= kinds
    entry = json.loads(next(a for k, a in final if k == "ENTRYPOINT"))
    cmd = json.loads(next(a for k, a in final if k == "CMD"))
    assert entry + cmd == ["nodevigil", "run", "-c", CONFIG_PATH]  # exec form: PID 1 gets signals


def test_the_container_and_kubernetes_kit_raise_the_descriptor_limit_as_the_unit_does() -> None:
    """Issue 12, item 3: under a 1,024 descriptor limit 2,000 API connections starved the
    probes. The unit sets LimitNOFILE; the image documents the same --ulimit, and the daemon
    itself raises its soft limit to the hard one (what a pod spec cannot set)."""
    found = re.search(r"^LimitNOFILE=(\d+)$", UNIT.read_text(), re.MULTILINE)
    assert found is not None
    limit = found.group(1)
    assert f"--ulimit nofile={limit}:{limit}" in DOCKERFILE.read_text()
    manifest = (KUBERNETES / "deployment.yaml").read_text()
    assert "raises its soft limit to the hard limit" in manifest
    code = (
        "import resource; from nodevigil.core.resources import raise_descriptor_limit as r; "
        "print(*r(), *resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    argv = ["sh", "-c", 'ulimit -Sn 512 && ulimit -Hn 4096 && exec "$@"', "sh"]
    done = subprocess.run(
        [*argv, sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.split() == ["512", "4096", "4096", "4096"], done.stdout + done.stderr


def test_dockerfile_copies_only_what_dockerignore_lets_in() -> None:
    steps = dockerfile_instructions(DOCKERFILE.read_text())
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = set()
    for keyword, args in steps:
        if keyword == "COPY" and not args.startswith("--from"):
            copied.update(args.split()[:-1])
    assert copied, "nothing is copied from the build context"
    for source in copied:
        assert source in allowed, f"{source} is excluded by .dockerignore"
        assert (ROOT / source).exists(), source


CONSTRAINTS = ROOT / "constraints.txt"
SOURCE = {"nodevigil", "monitor", "failover", "sla", "README.md"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    """constraints.txt as {normalised name: version}; every line is an exact pin."""
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not an exact pin"
            out[_norm(name)] = version
    return out


def build_stage() -> list[tuple[str, str]]:
    steps = dockerfile_instructions(DOCKERFILE.read_text())
    froms = [i for i, (k, _) in enumerate(steps) if k == "FROM"]
    return steps[froms[0] : froms[1]]


def test_dockerfile_installs_dependencies_before_copying_the_source() -> None:
    """Issue 17, item 13: a source change must not reinstall every dependency (layer cache)."""
    stage = build_stage()
    copies = [(i, a.split()[:-1]) for i, (k, a) in enumerate(stage) if k == "COPY"]
    runs = [(i, a) for i, (k, a) in enumerate(stage) if k == "RUN"]
    deps = next(i for i, a in runs if "-r requirements.txt -c constraints.txt" in a)
    first_source = min(i for i, sources in copies if SOURCE & set(sources))
    assert deps < first_source
    before = {src for i, sources in copies if i < deps for src in sources}
    assert before == {"pyproject.toml", "constraints.txt"}
    last = runs[-1][1]
    assert runs[-1][0] > first_source and "--no-deps" in last and "-c constraints.txt" in last


def test_the_image_and_the_tests_install_under_one_constraints_file() -> None:
    """The image resolves the runtime dependencies to constraints.txt's versions, without the
    demo's rich; scripts/setup.sh installs the tests' virtualenv (with rich, for the README's
    demo) under the same file, and the virtualenv holds exactly those versions."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_norm(Requirement(r).name) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    assert "rich" not in runtime
    assert [_norm(Requirement(r).name) for r in extras["demo"]] == ["rich"]
    pinned = pins()
    everything = runtime | {_norm(Requirement(r).name) for g in extras.values() for r in g}
    assert everything <= pinned.keys(), everything - pinned.keys()
    for name, version in pinned.items():
        assert metadata.version(name) == version, (
            f"the virtualenv has {name} {metadata.version(name)}"
        )
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert re.search(r"pip install -q -c constraints\.txt -e '\.\[test,demo\]'", setup)
    assert "constraints.txt -nt" in setup  # a new constraints file reinstalls


def test_the_dockerfile_dependency_step_resolves_to_the_constraints(tmp_path: Path) -> None:
    """The build stage's own commands, run here (pip's resolver in dry-run mode, so nothing is
    installed): what the image would get is exactly constraints.txt's versions, and no rich."""
    (_, step) = next((k, a) for k, a in build_stage() if k == "RUN" and "requirements.txt" in a)
    make_requirements, make_venv, install = (part.strip() for part in step.split("&&"))
    assert make_venv == "python -m venv /opt/nodevigil"
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copy(CONSTRAINTS, tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run(["sh", "-c", make_requirements], cwd=tmp_path, env=env, check=True)
    pip, _, options = install.partition(" install ")
    assert pip == "/opt/nodevigil/bin/pip", pip
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", *options.split(), "--dry-run",
         "--ignore-installed", "--quiet", "--report", str(report)],
        check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    chosen = {
        _norm(i["metadata"]["name"]): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    assert "rich" not in chosen and "pytest" not in chosen
    assert {"aiohttp", "pydantic", "psycopg-binary"} <= chosen.keys()
    pinned = pins()
    assert {name: pinned.get(name) for name in chosen} == chosen


# --- Kubernetes -----------------------------------------------------------------------------


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> manifest, for every file the kustomization lists."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    on_disk = sorted(p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk, "kustomization.yaml and the directory disagree"
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for name in listed:
        for doc in yaml.safe_load_all((KUBERNETES / name).read_text()):
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), name
            namespace = doc["metadata"].get("namespace", kustomization["namespace"])
            if doc["kind"] != "Namespace":
                assert namespace == kustomization["namespace"], name
            out[doc["kind"], doc["metadata"]["name"]] = doc
    return out


def embedded_config(resources: dict[tuple[str, str], dict[str, Any]]) -> tuple[str, str, str]:
    """(ConfigMap name, key, text) of the configuration the Deployment runs with."""
    deployment = resources["Deployment", "nodevigil"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_arg = container["args"][container["args"].index("-c") + 1]
    directory, key = config_arg.rsplit("/", 1)
    config_map = volumes[mounts[directory]]["configMap"]["name"]
    return config_map, key, resources["ConfigMap", config_map]["data"][key]


def test_kubernetes_manifests_reference_each_other() -> None:
    resources = manifests()
    kinds = {kind for kind, _ in resources}
    assert {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "ServiceMonitor",
    } <= kinds
    deployment = resources["Deployment", "nodevigil"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}  # the state_dir lock, see the comment
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert ("ServiceAccount", pod["serviceAccountName"]) in resources
    volumes = {v["name"]: v for v in pod["volumes"]}
    for volume in volumes.values():
        if "configMap" in volume:
            assert ("ConfigMap", volume["configMap"]["name"]) in resources
        if "secret" in volume:
            assert ("Secret", volume["secret"]["secretName"]) in resources
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            assert ("PersistentVolumeClaim", claim) in resources
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts.values()) <= volumes.keys()
    assert "persistentVolumeClaim" in volumes[mounts[STATE_DIR]]

    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"requests", "limits"} <= container["resources"].keys()

    (port,) = container["ports"]
    assert port["containerPort"] == API_PORT
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}

    service = resources["Service", "nodevigil"]
    assert service["spec"]["selector"].items() <= labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    monitor = resources["ServiceMonitor", "nodevigil"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"] and endpoint["path"] == "/metrics"


def test_kubernetes_config_is_valid_and_matches_the_pod() -> None:
    resources = manifests()
    _, _, text = embedded_config(resources)
    config = parse_config(yaml.safe_load(text))  # nodevigil's own validation, as check-config
    assert str(config.state_dir) == STATE_DIR
    assert config.api.listen.endswith(f":{API_PORT}")
    assert not config.api.listen.startswith("127."), "the Service could not reach a loopback API"
    pod = resources["Deployment", "nodevigil"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret_files = re.findall(r"secret_file:\s*(\S+?)[,}\s]", text)
    assert secret_files, "the example reads no secret from the Secret"
    for path in secret_files:
        directory, key = path.rsplit("/", 1)
        assert directory in mounts, f"{path} is not under a mounted volume"
        secret_name = volumes[mounts[directory]]["secret"]["secretName"]
        assert key in resources["Secret", secret_name]["stringData"], path


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is missing (only used to render kustomize)")
def test_kustomization_renders() -> None:
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(KUBERNETES)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(result.stdout))
    assert len(kinds) == len(manifests())


# --- Prometheus rules and the runbook -------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule in the rules file."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def markdown_anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a markdown file."""
    anchors = set()
    for line in text.splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def test_every_alert_has_severity_summary_description_and_a_runbook_entry() -> None:
    anchors = markdown_anchors(OPERATIONS.read_text())
    rules = alert_rules()
    assert len({r["alert"] for r in rules}) == len(rules), "duplicate alert names"
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        document, _, anchor = annotations["runbook_url"].partition("#")
        assert document == RUNBOOK_BASE + "/operations.md", name
        assert anchor == name.lower() and anchor in anchors, f"{name}: no runbook entry"


def test_runbook_urls_are_absolute_under_one_base_that_the_documented_sed_replaces(
    tmp_path: Path,
) -> None:
    text = RULES.read_text()
    urls = [rule["annotations"]["runbook_url"] for rule in alert_rules()]
    assert urls and all(url.startswith(RUNBOOK_BASE + "/operations.md#") for url in urls)
    # The command docs/operations.md gives, applied to the shipped file.
    command = next(
        line.strip()
        for line in OPERATIONS.read_text().splitlines()
        if line.strip().startswith("sed 's|" + RUNBOOK_BASE)
    )
    match = re.fullmatch(r"sed 's\|([^|]+)\|([^|]+)\|g' nodevigil-rules\.yml > \S+", command)
    assert match, command
    mine = "https://wiki.example.net/nodevigil"
    rendered = tmp_path / "nodevigil-rules.yml"
    rendered.write_text(text.replace(match.group(1), mine))
    rules = yaml.safe_load(rendered.read_text())["groups"]
    for rule in (r for group in rules for r in group["rules"] if "alert" in r):
        url = rule["annotations"]["runbook_url"]
        assert url == f"{mine}/operations.md#{rule['alert'].lower()}"
    assert "nodevigil.invalid" not in rendered.read_text()
    if PROMTOOL is not None:
        check = subprocess.run(
            [PROMTOOL, "check", "rules", str(rendered)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    for rule in alert_rules():
        assert cases.get(rule["alert"]) == {True, False}, rule["alert"]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is missing: install Debian's prometheus")
@pytest.mark.parametrize(
    "command",
    [["check", "rules", RULES.name], ["test", "rules", RULE_TESTS.name]],
    ids=["check", "test"],
)
def test_promtool(command: list[str]) -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, *command],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the dashboard ------------------------------------------------------------------------


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel, rows included, flattening collapsed rows."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    rows = {p["title"] for p in panels if p["type"] == "row"}
    for area in ("Fleet health", "Failover", "Probes", "Notification", "SLA"):
        assert any(area in title for title in rows), area
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


# --- every metric the rules and the dashboard use exists in the real /metrics --------------

_IGNORED_WORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
}
NOT_NODEVIGIL = {"up"}  # Prometheus' own per-target series
# Exported only by a cluster (cluster:, cluster.vantages): the single host scraped here has
# none; tests/cluster/test_vantage_processes.py checks them in a cluster's /metrics.
CLUSTER_ONLY = {"nodevigil_cluster_leader", "nodevigil_vantage_votes"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (also Grafana's, with $variables)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text):
        word = match.group(1)
        if word.lower() not in _IGNORED_WORDS:
            names.add(word)
    return names


def test_promql_metric_names() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{le="0.1", x=~"$v"}'
        "[$__rate_interval]))) > 0.1 and on(instance) b offset 15m - ignoring(le) c unless up"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b", "c", "up"}
    assert promql_metric_names("time() - max by (i) (d_seconds{i=~'x'}) > 1e3") == {"d_seconds"}


def dashboard_and_rule_metrics() -> dict[str, set[str]]:
    """Metric name -> where it is queried."""
    used: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in promql_metric_names(str(rule["expr"])):
            used.setdefault(name, set()).add(f"rule {rule['alert']}")
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            for name in promql_metric_names(target["expr"]):
                used.setdefault(name, set()).add(f"panel {panel['title']!r}")
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        match = re.match(r"label_values\(\s*(.+),\s*\w+\s*\)$", text)
        if match:
            for name in promql_metric_names(match.group(1)):
                used.setdefault(name, set()).add(f"variable {variable['name']}")
    return used


def exposed_series(metrics_text: str) -> set[str]:
    """The series names a scrape yields, from each family's ``# TYPE`` line."""
    names = set()
    for line in metrics_text.splitlines():
        parts = line.split()
        if len(parts) != 4 or parts[:2] != ["#", "TYPE"]:
            continue
        family, kind = parts[2], parts[3]
        if kind == "counter":
            names.add(family if family.endswith("_total") else family + "_total")
        elif kind == "histogram":
            names.update(family + suffix for suffix in ("_bucket", "_sum", "_count"))
        elif kind == "summary":
            names.update(family + suffix for suffix in ("", "_sum", "_count"))
        else:
            names.add(family)
    return names


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


@pytest.fixture(scope="module")
def live_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``/metrics`` of a real ``nodevigil run`` with a node, site, service, customer, plan,
    webhook notifier and alert route."""
    directory = tmp_path_factory.mktemp("live")
    port = free_port()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    (directory / "hook.secret").write_text(secret + "\n")
    config = {
        "state_dir": "state",
        "api": {"listen": f"127.0.0.1:{port}"},
        "defaults": {"interval": "200ms", "timeout": "100ms"},
        "sites": [{"name": "s", "address": "192.0.2.1"}],
        "nodes": [
            {
                "name": "n",
                "site": "s",
                "probes": [{"type": "http", "url": f"http://127.0.0.1:{port}/healthz"}],
            }
        ],
        "services": [{"name": "web", "sites": ["s"]}],
        "customers": [{"id": "acme", "services": ["web"], "plan": "standard"}],
        "notifiers": {
            "hook": {
                "type": "webhook",
                "url": "http://127.0.0.1:9/hook",
                "secret_file": "hook.secret",
            }
        },
        "contingency_plans": {"standard": {"steps": [{"after": "0s", "notify": ["hook"]}]}},
        "alerts": [{"events": ["service.*", "node.down"], "notify": ["hook"]}],
    }
    path = directory / "nodevigil.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = directory / "nodevigil.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nodevigil.app.cli", "run", "-c", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if _get(base + "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "not ready within 20 s:\n" + log_path.read_text()
            time.sleep(0.05)
        while True:  # ready may come before the node's first verdict: wait for it
            status, text = _get(base + "/metrics")
            assert status == 200
            if 'nodevigil_node_up{node="n",site="s"}' in text:
                break
            assert time.monotonic() < deadline, "no verdict within 20 s:\n" + text
            time.sleep(0.05)
        yield text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert code == 0, log_path.read_text()


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is missing: install Debian's prometheus")
def test_live_metrics_pass_promtool_and_follow_the_conventions(live_metrics: str) -> None:
    assert PROMTOOL is not None
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=live_metrics,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr
    types = {}
    for line in live_metrics.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
            types[parts[2]] = parts[3]
    for family, kind in types.items():
        assert (kind == "counter") == family.endswith("_total"), (family, kind)
        assert not re.search(r"_(percent|minutes|milliseconds|ms)$", family), family
    for total in ("nodevigil_event_log_write_errors_total", "nodevigil_event_log_dropped_total"):
        assert types.get(total) == "counter", total  # they were gauges holding totals
    # The SLA series are there from the first scrape, at 0: rules with offset work at once.
    assert 'nodevigil_sla_unavailable_seconds{service="web"} 0.0' in live_metrics
    assert 'nodevigil_service_site_info{service="web",site="s"} 1.0' in live_metrics
    # Per probe, as blackbox_exporter's: success and duration; counts per type only.
    # (1.0, or 0.0 when the 100 ms probe timed out on a busy machine)
    assert re.search(r'nodevigil_probe_success\{node="n",probe="http"\} [01]\.0\n', live_metrics)
    assert re.search(r'nodevigil_probe_duration_seconds\{node="n",probe="http"\} \d', live_metrics)
    # One verdict series per node, as blackbox_exporter's probe_success; counts per site.
    assert re.search(r'nodevigil_node_up\{node="n",site="s"\} [01]\.0\n', live_metrics)
    assert re.search(r'nodevigil_nodes\{site="s",verdict="unknown"\} 0\.0\n', live_metrics)
    assert 'node="n",probe="http",result=' not in live_metrics


def test_every_metric_in_rules_and_dashboard_exists(live_metrics: str) -> None:
    exposed = exposed_series(live_metrics)
    assert "nodevigil_node_up" in exposed and "nodevigil_probe_results_total" in exposed
    assert "nodevigil_node_verdict" not in exposed  # three series a node: replaced by node_up
    used = dashboard_and_rule_metrics()
    missing = {
        name: sorted(where)
        for name, where in used.items()
        if name not in exposed and name not in NOT_NODEVIGIL | CLUSTER_ONLY
    }
    assert not missing, f"queried but not in /metrics: {missing}"
    assert not {n for n in used if not n.startswith("nodevigil_")} - NOT_NODEVIGIL


# --- Alertmanager: an outage pages once ----------------------------------------------------


@pytest.mark.skipif(AMTOOL is None, reason="amtool is missing: install prometheus-alertmanager")
def test_alertmanager_config_passes_amtool() -> None:
    assert AMTOOL is not None
    result = subprocess.run(
        [AMTOOL, "check-config", str(ALERTMANAGER_CONFIG)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 inhibit rules" in result.stdout


async def test_real_alertmanager_inhibits_sites_by_their_service_and_nodes_by_their_site(
    tmp_path: Path,
) -> None:
    from tests.notify.receivers import get_alerts, run_alertmanager

    def alert(name: str, job: str = "nodevigil", **labels: str) -> dict[str, Any]:
        return {"labels": {"alertname": name, "job": job, "instance": "nv:9470", **labels}}

    sent = [
        alert("NodevigilServiceUnavailable", service="web"),
        alert("NodevigilSiteDown", site="bj", service="web"),
        alert("NodevigilSiteDown", site="sh", service="web"),
        alert("NodevigilSiteDown", site="bj", service="api"),  # api is still up: pages
        alert("NodevigilNodeDown", site="bj", node="bj-1", verdict="down"),
        alert("NodevigilSitePanic", site="bj"),
        alert("NodevigilNodeDown", site="gz", node="gz-1", verdict="down"),  # gz serves
        alert("NodevigilSiteDown", job="other", site="sh", service="web"),  # not our job
    ]
    muted = {
        ("NodevigilSiteDown", "bj", "web", "nodevigil"),
        ("NodevigilSiteDown", "sh", "web", "nodevigil"),
        ("NodevigilNodeDown", "bj", "", "nodevigil"),
        ("NodevigilSitePanic", "bj", "", "nodevigil"),
    }

    def key(labels: dict[str, str]) -> tuple[str, str, str, str]:
        return (
            labels["alertname"],
            labels.get("site", ""),
            labels.get("service", ""),
            labels["job"],
        )

    async with run_alertmanager(tmp_path, ALERTMANAGER_CONFIG.read_text()) as url:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/api/v2/alerts", json=sent) as response,
        ):
            assert response.status == 200, await response.text()
        seen: dict[tuple[str, str, str, str], bool] = {}

        async def all_judged() -> bool:
            seen.clear()
            for a in await get_alerts(url):
                seen[key(a["labels"])] = bool(a["status"]["inhibitedBy"])
            return len(seen) == len(sent) and {k for k, v in seen.items() if v} == muted

        try:
            await poll_until(all_judged, within=10, what="the inhibitions")
        except AssertionError:
            pytest.fail(
                f"inhibited: {sorted(k for k, v in seen.items() if v)}; want {sorted(muted)}"
            )
