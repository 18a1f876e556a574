"""deploy/ and the Dockerfile (issue 5): they agree with the gateway and with each other.

- alerts.yml passes ``promtool check rules`` and its unit tests (alerts_test.yml);
- every metric, and every label, that alerts.yml and dashboard.json use is in a real /metrics;
- ``promtool check metrics`` finds nothing to fix in that /metrics;
- the Kubernetes manifests validate offline (kubernetes-validate's bundled schemas; the PodMonitor
  CRD against a minimal schema written here), and their probes, ports, env URLs, mount path and
  grace period are the ones the ConfigMap's gateway.yaml and the Dockerfile say;
- the compose file validates (check-jsonschema's bundled compose-spec) and its mounts exist;
- the Dockerfile: non-root USER, HEALTHCHECK on /livez (the one-liner is run against a gateway),
  EXPOSE of both ports, and a CMD whose config path is the ConfigMap's mount.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import Config, parse_config
from gateway.errors import ConfigError

from .support import ROOT, free_port, gateway_yaml
from .support.monitoring import (
    ALERTS,
    DASHBOARD,
    alert_exprs,
    busy_gateway,
    concrete,
    dashboard_exprs,
    dashboard_panels,
)

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
K8S_VERSION = "1.30"  # sidecar containers (restartPolicy: Always on an init container) are on by default since 1.29
# What the Secret supplies, for validating the ConfigMap's gateway.yaml as the pod would see it.
POD_ENV = {"GATEWAY_ADMIN_TOKEN": "t0ken", "GEMINI_API_KEY": "k3y", "SUPABASE_URL": "https://p.supabase.co"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package prometheus; .ci/run installs it)")
    return path


# --------------------------------------------------------------------------- a gateway with every metric


def samples(metrics_text: str) -> dict[str, set[str]]:
    """Sample name (``_bucket``, ``_sum``, ``_count`` as exported) → the label names it has."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


# --------------------------------------------------------------------------- PromQL in alerts and dashboard

_SELECTOR = re.compile(r"\b((?:gateway_)[a-z0-9_]+)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_LABEL_VALUES = re.compile(r"label_values\((gateway_[a-z0-9_]+)[^,]*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)")
TARGET_LABELS = {"instance", "job", "pod", "namespace", "container"}  # added by Prometheus, not the gateway


def label_problems(where: str, expr: str, have: dict[str, set[str]]) -> list[str]:
    """Metric names and label names in ``expr`` that the gateway's /metrics does not have."""
    problems = []
    used: list[str] = []
    for name, matchers in _SELECTOR.findall(expr):
        used.append(name)
        if name not in have:
            problems.append(f"{where}: {name} is not in /metrics")
            continue
        for label in _MATCHER.findall(matchers or ""):
            if label not in have[name] | TARGET_LABELS:
                problems.append(f"{where}: {name} has no label {label!r}")
    labels_of_used = set().union(*(have.get(n, set()) for n in used)) | TARGET_LABELS | {"le"}
    for group in _GROUPING.findall(expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            if label not in labels_of_used:
                problems.append(f"{where}: grouping by {label!r}, a label none of {used} has")
    for name, label in _LABEL_VALUES.findall(expr):
        if label not in have.get(name, set()) | TARGET_LABELS:
            problems.append(f"{where}: label_values of {name} by {label!r}, a label it does not have")
    return problems


# --------------------------------------------------------------------------- Prometheus rules and metrics


def test_alert_rules_pass_promtool_and_their_unit_tests():
    tool = promtool()
    for args in (
        ["check", "rules", str(ALERTS)],
        ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        ["test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml")],
    ):
        done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


def test_the_alerts_the_issue_asks_for_exist():
    rules = {rule["alert"]: rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    assert rules["GatewayBreakerOpen"]["for"] == "1m"
    assert "gateway_breaker_state" in rules["GatewayBreakerOpen"]["expr"]
    assert 'status=~"5.."' in rules["GatewayErrorRatioHigh"]["expr"]
    assert "histogram_quantile(0.95" in rules["GatewayUpstreamSlow"]["expr"]
    assert "by (upstream, instance, le)" in rules["GatewayUpstreamSlow"]["expr"]
    assert 'gateway_retries_skipped_total{reason="budget"}' in rules["GatewayRetryBudgetExhausted"]["expr"]
    assert 'gateway_config_reloads_total{result="error"}' in rules["GatewayConfigReloadFailed"]["expr"]
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_dashboard_expressions_parse(tmp_path):
    """Each dashboard query (variables filled in) is valid PromQL: promtool parses them as recording rules."""
    tool = promtool()
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": concrete(expr)}
        for i, expr in enumerate(dashboard_exprs().values())
        if not expr.startswith("label_values(")
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_has_the_panels_the_issue_asks_for():
    board = json.loads(DASHBOARD.read_text())
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert board["uid"] == "inbox-gateway"
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
    cells = set()  # no two panels on the same grid cell
    for panel in panels:
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps another panel at {(x, y)}"
                cells.add((x, y))
    exprs = "\n".join(dashboard_exprs().values())
    for needed in (
        "sum by (status, source) (rate(gateway_requests_total",
        "histogram_quantile(0.5, sum by (upstream, route, le) (rate(gateway_request_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (upstream, route, le)",
        "histogram_quantile(0.99, sum by (upstream, route, le)",
        "histogram_quantile(0.95, sum by (upstream, le)",
        "gateway_breaker_state",
        "rate(gateway_retries_total",
        "rate(gateway_retries_skipped_total",
        'gateway_cache_requests_total{instance=~"$instance", upstream=~"$upstream", result="hit"}',
        "gateway_inflight_requests",
        "rate(gateway_rejected_total",
    ):
        assert needed in exprs, needed
    assert any(p["type"] == "state-timeline" and "gateway_breaker_state" in p["targets"][0]["expr"] for p in panels)


async def test_every_metric_the_alerts_and_dashboard_use_is_exported(upstream_factory, gateway_factory, tmp_path):
    _, text = await busy_gateway(upstream_factory, gateway_factory, tmp_path)
    have = samples(text)
    problems = []
    exprs = {**alert_exprs(), **dashboard_exprs()}
    for where, expr in exprs.items():
        problems += label_problems(where, expr, have)
    assert not problems, "\n".join(problems)
    used = {name for expr in exprs.values() for name, _ in _SELECTOR.findall(expr)}
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    # the contract's families that matter to an operator are all watched somewhere
    for family in (
        "gateway_requests_total",
        "gateway_request_duration_seconds",
        "gateway_upstream_tries_total",
        "gateway_retries_total",
        "gateway_retries_skipped_total",
        "gateway_breaker_state",
        "gateway_breaker_transitions_total",
        "gateway_cache_requests_total",
        "gateway_cache_entries",
        "gateway_cache_bytes",
        "gateway_inflight_requests",
        "gateway_rejected_total",
        "gateway_config_reloads_total",
        "gateway_store_errors_total",
    ):
        assert family in families, f"{family} is in no alert or panel"


async def test_promtool_check_metrics_finds_nothing_to_fix(upstream_factory, gateway_factory, tmp_path):
    tool = promtool()
    _, text = await busy_gateway(upstream_factory, gateway_factory, tmp_path)
    have = samples(text)
    for name in (
        "gateway_cache_requests_total",
        "gateway_breaker_transitions_total",
        "gateway_rejected_total",
        "gateway_store_errors_total",
    ):
        assert name in have  # the traffic reached the labelled families
    done = await asyncio.to_thread(
        subprocess.run, [tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == "", done.stdout + done.stderr


# --------------------------------------------------------------------------- Kubernetes


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def k8s(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in k8s_docs() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = k8s("Deployment")["spec"]["template"]["spec"]
    return spec


def gateway_container() -> dict[str, Any]:
    spec = pod_spec()
    found = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "gateway"]
    assert len(found) == 1
    return found[0]


def configmap_config(env: dict[str, str] | None = None) -> Config:
    text = k8s("ConfigMap")["data"]["gateway.yaml"]
    return parse_config(text, "gateway-configmap.yaml", env=POD_ENV if env is None else env)


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    return int(named[port])


# The PodMonitor is a CRD (monitoring.coreos.com/v1), not in Kubernetes' own schemas: the fields this
# repository uses, from the Prometheus Operator's API reference.
PODMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "matchExpressions": {"type": "array"},
                    },
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                        },
                    },
                },
            },
        },
    },
}


def test_kubernetes_manifests_validate_offline():
    """Core kinds against kubernetes-validate's bundled schemas (strict: unknown fields are errors);
    the PodMonitor against the minimal schema above. No network is used."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    import jsonschema

    kinds = []
    for name, doc in k8s_docs():
        kinds.append(doc["kind"])
        if doc["kind"] == "PodMonitor":
            jsonschema.validate(doc, PODMONITOR_SCHEMA)
        else:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {exc}")
    assert sorted(kinds) == ["ConfigMap", "Deployment", "PodMonitor", "Secret"]


def test_kubernetes_validation_catches_a_typo():
    """The validation above is not vacuous: a misspelt probe key fails it."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    text = yaml.safe_dump(k8s("Deployment"))
    assert "livenessProbe:" in text
    text = text.replace("livenessProbe:", "livenesProbe:", 1)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(yaml.safe_load(text), K8S_VERSION, strict=True)


def test_probes_and_ports_are_the_ones_the_configmap_config_serves():
    config = configmap_config()
    gw = gateway_container()
    spec = pod_spec()
    assert gw.get("restartPolicy") == "Always" and gw in spec["initContainers"], "a sidecar container"
    admin_port = config.admin.listen.port
    assert config.admin.listen.host == "0.0.0.0", "kubelet and Prometheus reach the admin port on the pod IP"
    assert config.admin.token == POD_ENV["GATEWAY_ADMIN_TOKEN"]
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", "/readyz")):
        get = gw[probe]["httpGet"]
        assert get["path"] == path, probe
        assert port_number(gw, get["port"]) == admin_port, probe
    assert port_number(gw, "proxy") == config.listen.port
    assert gw["resources"]["requests"]["cpu"] and gw["resources"]["limits"]["memory"]

    annotations = k8s("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == admin_port
    assert annotations["prometheus.io/path"] == "/metrics"
    monitor = k8s("PodMonitor")["spec"]
    assert (
        monitor["selector"]["matchLabels"].items()
        <= k8s("Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )
    assert [port_number(gw, e["port"]) for e in monitor["podMetricsEndpoints"]] == [admin_port]
    assert [e["path"] for e in monitor["podMetricsEndpoints"]] == ["/metrics"]

    drain = config.drain
    assert spec["terminationGracePeriodSeconds"] > drain.delay + drain.timeout


def test_backend_env_urls_point_at_the_gateway_prefixes():
    config = configmap_config()
    prefixes = {(up.prefix or f"/{name}"): name for name, up in config.upstreams.items()}
    backend = next(c for c in pod_spec()["containers"] if c["name"] == "backend")
    seen = set()
    for var in backend["env"]:
        value = var.get("value", "")
        if not value.startswith("http://"):
            continue
        m = re.fullmatch(r"http://([^:/]+):(\d+)(/[^/]+)", value)
        assert m, f"{var['name']}={value}: expected http://HOST:PORT/PREFIX"
        host, port, prefix = m.group(1), int(m.group(2)), m.group(3)
        assert host == config.listen.host == "127.0.0.1", var["name"]
        assert port == config.listen.port, var["name"]
        assert prefix in prefixes, f"{var['name']}: {prefix} is no upstream prefix ({sorted(prefixes)})"
        seen.add(prefixes[prefix])
    assert seen == set(config.upstreams), f"no backend setting points at {set(config.upstreams) - seen}"


def test_configmap_config_is_what_the_pod_mounts_and_the_image_reads():
    config_path = dockerfile_cmd()[-1]
    gw = gateway_container()
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    mounts = [m for m in gw["volumeMounts"] if "configMap" in volumes[m["name"]]]
    assert len(mounts) == 1
    mount = mounts[0]
    assert "subPath" not in mount, "a subPath mount is never updated: watch would not see ConfigMap changes"
    configmap = k8s("ConfigMap")
    assert volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert [f"{mount['mountPath'].rstrip('/')}/{key}" for key in configmap["data"]] == [config_path]
    assert configmap_config().watch is True

    secret = k8s("Secret")
    refs = [e["secretRef"]["name"] for e in gw["envFrom"] if "secretRef" in e]
    assert refs == [secret["metadata"]["name"]]
    assert set(secret["stringData"]) == {"GATEWAY_ADMIN_TOKEN", "GEMINI_API_KEY"}
    env_names = {e["name"] for e in gw.get("env", [])} | set(secret["stringData"])
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", configmap["data"]["gateway.yaml"]))
    assert used <= env_names, f"gateway.yaml reads {used - env_names}, which the pod does not set"

    uid = dockerfile_user()
    assert gw["securityContext"]["runAsUser"] == int(uid.split(":")[0])
    assert pod_spec()["securityContext"]["runAsNonRoot"] is True


def test_deploy_configs_differ_from_the_shipped_one_only_where_they_must():
    """The ConfigMap's and the compose gateway.yaml are the top-level gateway.yaml with a few keys
    changed; anything else that differs is drift (a timeout tuned in one place and not the other)."""
    shipped = parse_config((ROOT / "gateway.yaml").read_text(), "gateway.yaml", env=POD_ENV).model_dump()
    compose_text = (COMPOSE.parent / "gateway" / "gateway.yaml").read_text()
    for config, allowed in (
        (configmap_config(), {"admin", "watch"}),
        (parse_config(compose_text, "compose", env=POD_ENV), {"listen", "admin", "watch", "cache_store"}),
    ):
        mine = config.model_dump()
        assert sorted(k for k in shipped if shipped[k] != mine[k]) == sorted(allowed)


def test_configmap_config_passes_gateway_check(tmp_path):
    """``gateway check`` (the real CLI) with the Secret's variables set; without the admin token the
    gateway refuses the config (its admin port is on the pod IP), so a missing Secret fails closed."""
    path = tmp_path / "gateway.yaml"
    path.write_text(k8s("ConfigMap")["data"]["gateway.yaml"])
    env = {k: v for k, v in os.environ.items() if k not in POD_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        env={**env, **POD_ENV},
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert POD_ENV["GATEWAY_ADMIN_TOKEN"] not in done.stdout and POD_ENV["GEMINI_API_KEY"] not in done.stdout
    with pytest.raises(ConfigError, match="GATEWAY_ADMIN_TOKEN is not set"):
        configmap_config(env={})
    with pytest.raises(ConfigError, match="GATEWAY_ADMIN_TOKEN is empty"):
        configmap_config(env={"GATEWAY_ADMIN_TOKEN": ""})  # the Secret's placeholder


# --------------------------------------------------------------------------- compose


def test_compose_file_validates_and_agrees_with_its_configs():
    compose = yaml.safe_load(COMPOSE.read_text())
    check = shutil.which("check-jsonschema")
    if check is None:
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema)")
    done = subprocess.run(
        [check, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr

    base = COMPOSE.parent
    mounts: dict[str, dict[str, Path]] = {}
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (base / source).exists(), f"{name}: {source} does not exist"
                mounts.setdefault(name, {})[target] = (base / source).resolve()
    assert (base / compose["services"]["gateway"]["build"]["context"]).resolve() == ROOT

    config_dir = mounts["gateway"][str(Path(dockerfile_cmd()[-1]).parent)]
    config = parse_config((config_dir / "gateway.yaml").read_text(), "compose gateway.yaml", env=POD_ENV)
    assert config.listen.host == config.admin.listen.host == "0.0.0.0"
    published = {p.rsplit(":", 1)[1] for p in compose["services"]["gateway"]["ports"]}
    assert published == {str(config.listen.port), str(config.admin.listen.port)}
    assert all(p.startswith("127.0.0.1:") for s in compose["services"].values() for p in s.get("ports", []))
    assert config.cache_store.type == "redis"
    assert config.cache_store.url is not None and "redis://redis:6379/" in config.cache_store.url
    assert "redis" in compose["services"]

    prometheus = yaml.safe_load((mounts["prometheus"]["/etc/prometheus"] / "prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for s in job["static_configs"] for t in s["targets"]]
    assert targets == [f"gateway:{config.admin.listen.port}"]
    assert (mounts["prometheus"]["/etc/prometheus"] / "alerts.yml").samefile(ALERTS)

    provisioning = mounts["grafana"]["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "inbox-gateway.yml").read_text())["providers"][0]
    assert mounts["grafana"][provider["options"]["path"]] == DASHBOARD.parent.resolve()

    grace = compose["services"]["gateway"]["stop_grace_period"]
    assert int(grace.rstrip("s")) > config.drain.delay + config.drain.timeout


# --------------------------------------------------------------------------- Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last_from = max(i for i, (ins, _) in enumerate(steps) if ins == "FROM")
    return steps[last_from:]


def dockerfile_cmd() -> list[str]:
    cmds = [json.loads(args) for ins, args in dockerfile_final_stage() if ins == "CMD"]
    assert len(cmds) == 1 and isinstance(cmds[0], list), "one CMD, in exec form (signals reach the gateway)"
    return list(cmds[0])


def dockerfile_user() -> str:
    users = [args for ins, args in dockerfile_final_stage() if ins == "USER"]
    assert users, "the final stage sets USER"
    return users[-1]


def test_dockerfile_runs_the_gateway_as_non_root_with_healthcheck_and_ports():
    steps = dockerfile()
    shipped = parse_config((ROOT / "gateway.yaml").read_text(), "gateway.yaml", env={})
    for ins, args in steps:
        if ins == "FROM":
            assert args.split()[0] == "python:3.11-slim", args
    final = dockerfile_final_stage()
    instructions = [ins for ins, _ in final]
    user = dockerfile_user()
    assert user.split(":")[0] not in {"root", "0"}
    assert instructions.index("USER") < instructions.index("CMD")
    assert not any(ins == "ENTRYPOINT" for ins in instructions)
    assert dockerfile_cmd()[:3] == ["gateway", "run", "--config"]
    assert dockerfile_cmd()[3] == "/etc/gateway/gateway.yaml"
    assert any(ins == "COPY" and args.endswith(" /etc/gateway/gateway.yaml") for ins, args in final)

    exposed = {p for ins, args in final if ins == "EXPOSE" for p in args.split()}
    assert exposed == {str(shipped.listen.port), str(shipped.admin.listen.port)} == {"8080", "9901"}

    installs = " ".join(args for ins, args in steps if ins == "RUN" and "pip " in args)
    assert "[test]" not in installs and "[dev]" not in installs and "-e " not in installs
    assert "inbox-gateway" in installs or " ." in installs

    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert ignored[0] == "*" and "!gateway/" in ignored and "!tests/" not in ignored


async def test_dockerfile_healthcheck_command_works_against_a_gateway(upstream_factory, gateway_factory):
    """The HEALTHCHECK one-liner, pointed at a running gateway's admin port, exits 0; at a closed port, not."""
    checks = [args for ins, args in dockerfile_final_stage() if ins == "HEALTHCHECK"]
    assert len(checks) == 1
    options, _, command = checks[0].partition("CMD ")
    assert "--interval" in options and "--timeout" in options
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"], "needs no curl in the image"
    code = argv[2]
    assert "http://127.0.0.1:9901/livez" in code
    up = await upstream_factory()
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}"}))

    async def run(port: int) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code.replace(":9901/", f":{port}/"), stderr=asyncio.subprocess.DEVNULL
        )
        return await asyncio.wait_for(proc.wait(), 20)

    assert await run(gw.gateway.admin_port) == 0
    assert await run(free_port()) != 0
