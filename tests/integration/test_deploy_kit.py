"""The deploy kit under deploy/, checked offline with the real tools an operator would use, and its configs
checked by ticketbridge itself (and run as three processes on the real PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import kubernetes_validate
import pytest
import yaml

from tests.integration.processes import DSN, free_port, spawn, stop, wait_http

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
KUBE_FILES = ["namespace.yaml", "config.yaml", "mappings.yaml", "secret.example.yaml", "deployment.yaml",
              "service.yaml", "pdb.yaml"]
ENV = {"BRIDGE_ADMIN_TOKEN": "t" * 24, "POSTGRES_PASSWORD": "p" * 24, "GRAFANA_ADMIN_PASSWORD": "g" * 12,
       "MAILGUN_SIGNING_KEY": "k" * 24,
       "TICKETBRIDGE_STORE_URL": f"{DSN}?schema=tb_deploy_check"}


def tool(name: str) -> str:
    """The path of a tool .ci/run installs; a missing one fails the test rather than skipping it in CI."""
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run installs it")
        pytest.skip(f"{name} is not installed (apt-get install docker-compose prometheus systemd)")
    return found


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=ROOT,
                          timeout=120, check=False)


def kube_docs() -> dict[str, dict[str, Any]]:
    return {name: yaml.safe_load((KUBE / name).read_text()) for name in KUBE_FILES}


def test_compose_file_validates_with_docker_compose() -> None:
    """`docker-compose config` accepts deploy/compose.yaml and sees PostgreSQL, three replicas, Prometheus and
    Grafana."""
    done = run(tool("docker-compose"), "-f", "deploy/compose.yaml", "config", env=ENV)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert set(services) == {"postgres", "ticketbridge", "balancer", "prometheus", "grafana"}
    assert services["ticketbridge"]["deploy"]["replicas"] == 3
    assert "127.0.0.1:8080:8080" in str(services["balancer"]["ports"])


def test_compose_file_refuses_to_start_without_its_secrets() -> None:
    """Without the admin token and database password set, compose names the missing variable."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"BRIDGE_ADMIN_TOKEN", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}}
    done = subprocess.run([tool("docker-compose"), "-f", "deploy/compose.yaml", "config"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120, check=False)
    assert done.returncode != 0
    assert "BRIDGE_ADMIN_TOKEN" in done.stderr or "POSTGRES_PASSWORD" in done.stderr


def test_prometheus_config_passes_promtool() -> None:
    """promtool accepts the Prometheus config the compose file mounts."""
    done = run(tool("promtool"), "check", "config", "--syntax-only", "deploy/prometheus/prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_manifests_pass_the_schema_check() -> None:
    """Every manifest validates strictly (unknown fields refused) against the Kubernetes API schemas."""
    for name, doc in kube_docs().items():
        kubernetes_validate.validate(doc, "1.30.0", strict=True)  # raises on the first invalid field
        assert doc["metadata"]["name"].startswith("ticketbridge"), name


def test_kubernetes_deployment_waits_longer_than_the_shutdown_grace() -> None:
    """The pod's termination grace covers the preStop pause plus the server's own shutdown grace, and the
    probes point at /readyz and /healthz."""
    docs = kube_docs()
    spec = docs["deployment.yaml"]["spec"]["template"]["spec"]
    bridge_cfg = yaml.safe_load(docs["config.yaml"]["data"]["bridge.yaml"])
    container = spec["containers"][0]
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > bridge_cfg["server"]["shutdown_grace_seconds"] + pause
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert docs["pdb.yaml"]["spec"]["maxUnavailable"] == 1


def test_kubernetes_mappings_configmap_matches_the_mappings_folder() -> None:
    """The mappings ConfigMap holds exactly the files of mappings/, so the cluster runs what the repo tests."""
    data = kube_docs()["mappings.yaml"]["data"]
    files = {p.name: p.read_text() for p in sorted((ROOT / "mappings").glob("*.yaml"))}
    assert data == files, ("deploy/kubernetes/mappings.yaml is out of date; regenerate it with the command "
                           "at its top")


def test_systemd_unit_is_hardened() -> None:
    """systemd-analyze rates the unit's sandboxing at 3.0 or less, with its own user, a file limit and a umask."""
    done = run(tool("systemd-analyze"), "security", "--offline=true", "--no-pager", "deploy/ticketbridge.service")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
    assert match is not None, done.stdout + done.stderr
    assert float(match.group(1)) <= 3.0, done.stdout
    unit = (DEPLOY / "ticketbridge.service").read_text()
    for line in ("DynamicUser=yes", "LimitNOFILE=65536", "UMask=0077"):
        assert line in unit.splitlines()


def test_dockerfile_installs_the_postgres_extra() -> None:
    """The image can open a postgresql:// store: it installs the `postgres` extra."""
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"pip install \"?\.\[postgres\]", text)


def config_in_folder(tmp_path: Path, text: str) -> Path:
    """A deploy config placed beside a copy of the shipped mappings, as the container mounts them."""
    shutil.copytree(ROOT / "mappings", tmp_path / "mappings")
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(text)
    return cfg


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_deploy_configs_pass_ticketbridge_check(tmp_path: Path, where: str) -> None:
    """The bridge.yaml each kit ships loads, and the mappings beside it check and pass their tests."""
    if where == "compose":
        text = (DEPLOY / "compose" / "bridge.yaml").read_text()
    else:
        text = yaml.safe_load((KUBE / "config.yaml").read_text())["data"]["bridge.yaml"]
    cfg = config_in_folder(tmp_path, text)
    done = subprocess.run([sys.executable, "-m", "bridge", "check", "-c", str(cfg)], capture_output=True, text=True,
                          env={**os.environ, **ENV}, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.integration
async def test_compose_config_runs_three_processes_on_one_postgresql(
    tmp_path: Path, pg_schema: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three processes started with the compose config (its store pointed at the test database) share the
    queue: forms posted to each are all delivered, each once."""
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    text = (DEPLOY / "compose" / "bridge.yaml").read_text()
    text, n = re.subn(r"url: postgresql://\S+", f"url: {DSN}?schema={pg_schema}", text)
    assert n == 1
    text, n = re.subn(r"dir: /data/attachments", f"dir: {tmp_path / 'attachments'}", text)  # the volume's place
    assert n == 1
    cfg = config_in_folder(tmp_path, text)
    ports = [free_port() for _ in range(3)]
    log = tmp_path / "processes.log"
    procs = [spawn(["serve", "-c", str(cfg), "--host", "127.0.0.1", "--port", str(p)], log) for p in ports]
    try:
        for port, proc in zip(ports, procs, strict=True):
            await wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=60)
        async with aiohttp.ClientSession() as session:
            for i in range(30):
                form = {"name": f"n{i}", "email": f"c{i}@example.com", "subject": f"s{i}", "message": "m"}
                async with session.post(f"http://127.0.0.1:{ports[i % 3]}/hooks/website-contact", data=form) as r:
                    assert r.status == 202, await r.text()
        conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
        try:
            for _ in range(600):
                done = await conn.fetchval("SELECT COUNT(*) FROM deliveries WHERE status = 'succeeded'")
                if done >= 30:
                    break
                await asyncio.sleep(0.05)
            attempts = await conn.fetchval("SELECT COUNT(*) FROM attempts")
        finally:
            await conn.close()
        assert (done, attempts) == (30, 30), log.read_text()[-3000:]
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                stop(proc)


PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
SCRAPED_CONFIG = """\
store: {url: "sqlite:///var/bridge.db"}
admin: {token: "letmein-letmein-letmein", read_tokens: {prometheus: "read-only-read-only"}}
sources:
  contact: {kind: form}
destinations:
  kapture: {vendor: kapture, sandbox: true}
"""
SCRAPED_MAPPING = """\
source: contact
destination: kapture
action: create_ticket
fields:
  title: "{{ payload.subject }}"
"""
# PromQL words that are not metric names: functions, aggregations, keywords, the label names used in exprs, and
# `up`, which Prometheus itself records for each scrape.
PROMQL_WORDS = {"sum", "max", "min", "by", "rate", "increase", "delta", "histogram_quantile", "le", "source",
                "outcome", "destination", "classification", "mapping", "reason", "status", "instance", "result",
                "job", "problem", "up", "or", "absent"}


def test_alerting_rules_pass_promtool_and_prometheus_loads_them() -> None:
    """promtool accepts deploy/prometheus/alerts.yaml, prometheus.yml loads it, and compose mounts it beside."""
    done = run(tool("promtool"), "check", "rules", "deploy/prometheus/alerts.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "alerts.yaml" in yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["rule_files"]
    mounts = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["prometheus"]["volumes"]
    assert "./prometheus/alerts.yaml:/etc/prometheus/alerts.yaml:ro" in mounts
    names = {r["alert"] for g in yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())["groups"] for r in g["rules"]}
    assert {"TicketbridgeDestinationPaused", "TicketbridgeDeadDeliveriesRising", "TicketbridgeBacklogOld",
            "TicketbridgeMappingReloadFailed", "TicketbridgeMappingsDegraded", "TicketbridgeStoreNotReady",
            "TicketbridgeDown", "TicketbridgeAbsent"} <= names


def test_alerting_rules_fire_on_the_series_they_watch() -> None:
    """promtool's rule unit tests: each alert fires on the series that should raise it, and not before."""
    done = run(tool("promtool"), "test", "rules", "tests/integration/alerts_test.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_is_provisioned_with_the_prometheus_source_and_the_dashboard() -> None:
    """The compose kit's Grafana gets Prometheus as its default data source and the dashboard file from a
    provisioning folder that points where the dashboard is mounted."""
    grafana = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["grafana"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in grafana["volumes"]}
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    [source] = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())["datasources"]
    assert (source["type"], source["url"], source["isDefault"]) == ("prometheus", "http://prometheus:9090", True)
    [provider] = yaml.safe_load((GRAFANA / "provisioning/dashboards/ticketbridge.yaml").read_text())["providers"]
    assert mounts["./grafana/ticketbridge.json"] == provider["options"]["path"] + "/ticketbridge.json"


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label names, functions and quoted values left out)."""
    expr = re.sub(r'"[^"]*"', "", expr)  # label values
    expr = re.sub(r"\[[^\]]*\]|\boffset\s+\d+[smhdwy]", "", expr)  # range selectors and offsets
    expr = re.sub(r"\d+(\.\d+)?", "", expr)  # numbers
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if w not in PROMQL_WORDS}


def exported(text: str) -> set[str]:
    """Every sample name /metrics can show: each family, and a histogram's _bucket, _sum and _count."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def dashboard_exprs() -> list[str]:
    board = json.loads((GRAFANA / "ticketbridge.json").read_text())
    exprs = []
    for panel in board["panels"]:
        assert {"id", "type", "title", "gridPos", "targets"} <= set(panel), panel.get("title")
        assert panel["datasource"]["type"] == "prometheus"
        for target in panel["targets"]:
            exprs.append(target["expr"])
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    return exprs


async def test_dashboard_and_alerts_read_only_metrics_a_running_server_exports(tmp_path: Path) -> None:
    """A server is started and fed a form; its /metrics (scraped with a read token) passes `promtool check
    metrics`, and every metric the Grafana dashboard and the alerting rules read is among those it exports."""
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "contact.yaml").write_text(SCRAPED_MAPPING)
    (tmp_path / "bridge.yaml").write_text(SCRAPED_CONFIG)
    port = free_port()
    proc = spawn(["serve", "-c", str(tmp_path / "bridge.yaml"), "--host", "127.0.0.1", "--port", str(port)],
                 tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer read-only-read-only"}
    try:
        await wait_http(f"{base}/readyz", proc, timeout=60)
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/hooks/contact", data={"subject": "hello"},
                                    headers={"Accept": "application/json"}) as resp:
                assert resp.status == 202, await resp.text()
            text = ""
            for _ in range(200):  # until the attempt is counted
                async with session.get(f"{base}/metrics", headers=auth) as resp:
                    assert resp.status == 200
                    text = await resp.text()
                if 'classification="success"' in text:
                    break
                await asyncio.sleep(0.05)
    finally:
        stop(proc)
    assert 'classification="success"' in text, (tmp_path / "serve.log").read_text()[-3000:]
    checked = await asyncio.to_thread(subprocess.run, [tool("promtool"), "check", "metrics"], input=text,
                                      capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    names = exported(text)
    rules = [r["expr"] for g in yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())["groups"]
             for r in g["rules"]]
    for expr in dashboard_exprs() + rules:
        unknown = metric_names(expr) - names
        assert not unknown, f"{expr!r} reads {sorted(unknown)}, which /metrics does not export"
