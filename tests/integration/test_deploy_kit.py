"""The deploy kit under deploy/, checked offline with the real tools an operator would use, and its configs
checked by ticketbridge itself (and run as three processes on the real PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
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

from bridge.app import load_mappings, per_process_sandboxes
from bridge.config import Config, load_config
from bridge.forwarded import TrustedProxies
from bridge.registries import REGISTRIES
from tests.integration.processes import DSN, free_port, spawn, stop, wait_http

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
KUBE_FILES = ["namespace.yaml", "config.yaml", "mappings.yaml", "secret.example.yaml", "deployment.yaml",
              "service.yaml", "pdb.yaml", "sandbox.yaml", "sandbox-service.yaml", "sandbox-networkpolicy.yaml"]
ENV = {"BRIDGE_ADMIN_TOKEN": "t" * 24, "BRIDGE_METRICS_TOKEN": "m" * 24, "POSTGRES_PASSWORD": "p" * 24,
       "GRAFANA_ADMIN_PASSWORD": "g" * 12, "MAILGUN_SIGNING_KEY": "k" * 24,
       "TICKETBRIDGE_STORE_URL": f"{DSN}?schema=tb_deploy_check"}
SECRETS = ("BRIDGE_ADMIN_TOKEN", "BRIDGE_METRICS_TOKEN", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD")


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


def compose_resolved() -> dict[str, Any]:
    """The compose file as `docker-compose config` resolves it (anchors, defaults, the env above)."""
    done = run(tool("docker-compose"), "-f", "deploy/compose.yaml", "config", env=ENV)
    assert done.returncode == 0, done.stderr
    resolved: dict[str, Any] = yaml.safe_load(done.stdout)
    return resolved


def compose_services() -> dict[str, Any]:
    """The compose file's services as `docker-compose config` resolves them."""
    services: dict[str, Any] = compose_resolved()["services"]
    return services


def kit_config_text(where: str) -> str:
    """The bridge.yaml the compose or the Kubernetes kit gives every replica."""
    if where == "compose":
        return (DEPLOY / "compose" / "bridge.yaml").read_text()
    text: str = yaml.safe_load((KUBE / "config.yaml").read_text())["data"]["bridge.yaml"]
    return text


def kit_config(tmp_path: Path, where: str) -> Config:
    """The kit's bridge.yaml as the bridge loads it, beside a copy of the shipped mappings, with ENV's secrets."""
    return load_config(config_in_folder(tmp_path, kit_config_text(where)), ENV, registries=REGISTRIES)


def test_compose_file_validates_with_docker_compose() -> None:
    """`docker-compose config` accepts deploy/compose.yaml and sees PostgreSQL, three replicas, the one shared
    sandbox, Prometheus and Grafana."""
    services = compose_services()
    assert set(services) == {"postgres", "ticketbridge", "sandbox", "balancer", "prometheus", "grafana"}
    assert services["ticketbridge"]["deploy"]["replicas"] == 3
    assert "127.0.0.1:8080:8080" in str(services["balancer"]["ports"])


@pytest.mark.parametrize("missing", SECRETS)
def test_compose_file_refuses_to_start_without_its_secrets(missing: str) -> None:
    """Without each of its secrets set (the admin token, Prometheus's read token, the database and Grafana
    passwords), compose refuses and names the missing variable."""
    env = {k: v for k, v in {**os.environ, **ENV}.items() if k != missing}
    done = subprocess.run([tool("docker-compose"), "-f", "deploy/compose.yaml", "config"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120, check=False)
    assert done.returncode != 0
    assert missing in done.stderr


def test_compose_replicas_send_to_one_shared_sandbox(tmp_path: Path) -> None:
    """Every sandbox destination of the replicas' config names the compose kit's one `sandbox` service (which runs
    `ticketbridge sandbox` on the port they name, built from the replicas' image, checked healthy before they
    start), so no replica runs a simulator of its own: a follow-up any replica sends finds its ticket. Before,
    each replica ran its own, numbering tickets from the same start."""
    services = compose_services()
    sandbox = services["sandbox"]
    assert sandbox.get("deploy", {}).get("replicas", 1) == 1
    bridge = services["ticketbridge"]
    assert (sandbox["image"], sandbox["build"]) == (bridge["image"], bridge["build"])
    command = sandbox["command"]
    assert command[:2] == ["ticketbridge", "sandbox"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    port = int(command[command.index("--port") + 1])
    assert f"http://127.0.0.1:{port}/readyz" in " ".join(sandbox["healthcheck"]["test"])
    assert bridge["depends_on"]["sandbox"]["condition"] == "service_healthy"
    assert all(p.startswith("127.0.0.1:") for p in map(str, sandbox["ports"]))
    config = kit_config(tmp_path, "compose")
    sandboxes = {name: d for name, d in config.destinations.items() if d.sandbox}
    assert sandboxes, "the kit ships sandbox destinations"
    for name, d in sandboxes.items():
        assert d.base_url == f"http://sandbox:{port}/{d.vendor}", name
    assert per_process_sandboxes(config, load_mappings(config)) == {}


def haproxy_sections() -> dict[str, list[str]]:
    """deploy/compose/haproxy.cfg's sections (`frontend hooks`, `defaults`, …) and the settings in each."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (DEPLOY / "compose" / "haproxy.cfg").read_text().splitlines():
        text = line.split("#", 1)[0].rstrip()
        if not text:
            continue
        if not text[0].isspace():
            current = sections.setdefault(" ".join(text.split()), [])
        else:
            current.append(" ".join(text.split()))
    return sections


def test_compose_replicas_read_the_client_from_the_balancer_alone(tmp_path: Path) -> None:
    """HAProxy appends each sender's address to X-Forwarded-For (`option forwardfor` where its hooks come in); the
    balancer has a fixed address on the compose network's fixed subnet, and the replicas' `trusted_proxies` are
    that address and the subnet's gateway (the host's side of the published port), nothing else: a forwarded
    address from the balancer is the client, one from another container on the network is ignored. Before, the
    replicas saw every sender as the balancer."""
    sections = haproxy_sections()
    assert "option forwardfor" in sections["frontend hooks"] + sections["defaults"]
    resolved = compose_resolved()
    [ipam] = resolved["networks"]["default"]["ipam"]["config"]
    subnet = ipaddress.ip_network(ipam["subnet"])
    balancer = resolved["services"]["balancer"]["networks"]["default"]["ipv4_address"]
    assert [name for name, service in resolved["services"].items()
            if "ipv4_address" in str(service.get("networks", ""))] == ["balancer"]
    trusted = kit_config(tmp_path, "compose").server.trusted_proxies
    assert sorted(trusted) == sorted([balancer, ipam["gateway"]])
    assert all(ipaddress.ip_address(address) in subnet for address in trusted)
    # The other containers' addresses, handed out in turn, come from a range that holds none of the trusted ones:
    # given the balancer's, a container would keep the balancer from starting, or be trusted in its place.
    dynamic = ipaddress.ip_network(ipam["ip_range"])
    assert dynamic.network_address in subnet and dynamic.broadcast_address in subnet
    assert not any(ipaddress.ip_address(address) in dynamic for address in trusted)
    proxies = TrustedProxies(trusted)
    assert proxies.client(balancer, ["8.8.4.4"]) == "8.8.4.4"
    neighbour = str(subnet[20])
    assert proxies.client(neighbour, ["8.8.4.4"]) == neighbour


def test_kubernetes_config_trusts_no_proxy_until_told_which() -> None:
    """The Kubernetes kit ships no ingress, so it trusts no proxy; its config says how to name the controller's."""
    text = kit_config_text("kubernetes")
    assert "trusted_proxies" not in yaml.safe_load(text)["server"]
    assert "# trusted_proxies:" in text


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


def test_kubernetes_replicas_send_to_one_shared_sandbox(tmp_path: Path) -> None:
    """Every sandbox destination of the replicas' config names the ticketbridge-sandbox Service, which selects the
    one pod (never two: Recreate) running `ticketbridge sandbox` on the port it targets; the replicas' Service and
    PodDisruptionBudget do not select that pod, a NetworkPolicy lets only the replicas reach it, and kustomize
    applies it all. No replica runs a simulator of its own."""
    docs = kube_docs()
    deployment, service, policy = docs["sandbox.yaml"], docs["sandbox-service.yaml"], docs["sandbox-networkpolicy.yaml"]
    spec = deployment["spec"]
    assert (spec["replicas"], spec["strategy"]["type"]) == (1, "Recreate")
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    [container] = spec["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["ticketbridge", "sandbox"]
    assert args[args.index("--host") + 1] == "0.0.0.0"
    port = int(args[args.index("--port") + 1])
    [named] = [p for p in container["ports"] if p["containerPort"] == port]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": named["name"]}
    assert container["image"] == docs["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    [service_port] = service["spec"]["ports"]
    assert service_port["targetPort"] in (named["name"], port)
    bridge_pods = docs["deployment.yaml"]["spec"]["template"]["metadata"]["labels"]
    for selector in (docs["service.yaml"]["spec"]["selector"], docs["pdb.yaml"]["spec"]["selector"]["matchLabels"],
                     docs["deployment.yaml"]["spec"]["selector"]["matchLabels"]):
        assert not selector.items() <= pod_labels.items(), selector
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    [rule] = policy["spec"]["ingress"]
    [source] = rule["from"]
    assert source["podSelector"]["matchLabels"].items() <= bridge_pods.items()
    resources = yaml.safe_load((KUBE / "kustomization.yaml").read_text())["resources"]
    assert sorted(resources) == sorted(n.replace("secret.example.yaml", "secret.yaml") for n in KUBE_FILES)
    config = kit_config(tmp_path, "kubernetes")
    sandboxes = {name: d for name, d in config.destinations.items() if d.sandbox}
    assert sandboxes, "the kit ships sandbox destinations"
    for name, d in sandboxes.items():
        assert d.base_url == f"http://{service['metadata']['name']}:{service_port['port']}/{d.vendor}", name
    assert per_process_sandboxes(config, load_mappings(config)) == {}


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_prometheus_scrapes_with_a_read_token_not_the_admin_one(tmp_path: Path, where: str) -> None:
    """Each kit's config gives Prometheus a read token of its own (admin.read_tokens.prometheus, from
    BRIDGE_METRICS_TOKEN), and the compose kit's Prometheus gets that token, never the admin one: its container
    has no admin token to write, and its scrape reads the file it writes the read token to."""
    config = kit_config(tmp_path, where)
    assert config.admin.read_tokens == {"prometheus": ENV["BRIDGE_METRICS_TOKEN"]}
    assert config.admin.token == ENV["BRIDGE_ADMIN_TOKEN"]
    if where == "kubernetes":
        assert "BRIDGE_METRICS_TOKEN" in kube_docs()["secret.example.yaml"]["stringData"]
        return
    prometheus = compose_services()["prometheus"]
    assert set(prometheus["environment"]) == {"BRIDGE_METRICS_TOKEN"}
    [scrape] = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    token_file = scrape["authorization"]["credentials_file"]
    script = " ".join(prometheus["command"])
    assert re.search(r'printf %s "\$\$?BRIDGE_METRICS_TOKEN" > ' + re.escape(token_file), script), script
    assert "ADMIN" not in script.replace("rm -f /prometheus/admin-token", "")


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
    cfg = config_in_folder(tmp_path, kit_config_text(where))
    done = subprocess.run([sys.executable, "-m", "bridge", "check", "-c", str(cfg)], capture_output=True, text=True,
                          env={**os.environ, **ENV}, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def compose_config_here(tmp_path: Path, schema: str, sandbox_port: int) -> Path:
    """The compose kit's bridge.yaml as its replicas run it, its store pointed at the test database's `schema`,
    its attachments in tmp_path and its shared sandbox service at `sandbox_port` on this machine."""
    text = (DEPLOY / "compose" / "bridge.yaml").read_text()
    text, n = re.subn(r"url: postgresql://\S+", f"url: {DSN}?schema={schema}", text)
    assert n == 1
    text, n = re.subn(r"dir: /data/attachments", f"dir: {tmp_path / 'attachments'}", text)  # the volume's place
    assert n == 1
    text, n = re.subn(r"base_url: http://sandbox:9090/", f"base_url: http://127.0.0.1:{sandbox_port}/", text)
    assert n == 3
    return config_in_folder(tmp_path, text)


async def kapture_tickets(session: aiohttp.ClientSession, sandbox_port: int) -> list[dict[str, Any]]:
    async with session.get(f"http://127.0.0.1:{sandbox_port}/kapture/tickets") as resp:
        found: list[dict[str, Any]] = (await resp.json())["tickets"]
        return found


@pytest.mark.integration
async def test_compose_config_runs_three_processes_on_one_postgresql_and_one_sandbox(
    tmp_path: Path, pg_schema: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three processes started with the compose config (its store pointed at the test database), and its one
    sandbox as `ticketbridge sandbox`: they share the queue (forms posted to each are all delivered, each once),
    and each email thread's reply, posted to another process than its first message, is a comment on that thread's
    own ticket in the shared sandbox, whichever process sends it. Prometheus's read token reads /metrics and
    changes nothing. Before, each process ran its own simulator, numbering tickets from the same start: a reply
    another process sent went to that process's ticket of the same number (another customer's), or died."""
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    sandbox_port = free_port()
    cfg = compose_config_here(tmp_path, pg_schema, sandbox_port)
    ports = [free_port() for _ in range(3)]
    log = tmp_path / "processes.log"
    sandbox = spawn(["sandbox", "--port", str(sandbox_port)], log)
    procs = [spawn(["serve", "-c", str(cfg), "--host", "127.0.0.1", "--port", str(p)], log) for p in ports]
    threads = 6
    try:
        await wait_http(f"http://127.0.0.1:{sandbox_port}/readyz", sandbox, timeout=60)
        for port, proc in zip(ports, procs, strict=True):
            await wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=60)
        async with aiohttp.ClientSession() as session:
            for i in range(30):
                form = {"name": f"n{i}", "email": f"c{i}@example.com", "subject": f"s{i}", "message": "m"}
                async with session.post(f"http://127.0.0.1:{ports[i % 3]}/hooks/website-contact", data=form) as r:
                    assert r.status == 202, await r.text()
            for i in range(threads):
                first = {"from": f"customer{i}@example.com", "subject": f"Router down {i}",
                         "message_id": f"<m{i}@example.com>", "stripped_text": f"No internet {i}"}
                async with session.post(f"http://127.0.0.1:{ports[i % 3]}/hooks/support-mail", json=first) as r:
                    assert r.status == 202, await r.text()
            for i in range(threads):
                reply = {"from": f"customer{i}@example.com", "subject": f"Re: Router down {i}",
                         "message_id": f"<r{i}@example.com>", "in_reply_to": f"<m{i}@example.com>",
                         "references": [f"<m{i}@example.com>"], "stripped_text": f"Still down {i}"}
                async with session.post(f"http://127.0.0.1:{ports[(i + 1) % 3]}/hooks/support-mail", json=reply) as r:
                    assert r.status == 202, await r.text()
            conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
            try:
                expected = 30 + 2 * threads
                for _ in range(600):
                    settled = await conn.fetchval("SELECT COUNT(*) FROM deliveries WHERE status IN "
                                                  "('succeeded', 'dead')")
                    if settled >= expected:
                        break
                    await asyncio.sleep(0.05)
                statuses = dict(await conn.fetch("SELECT status, COUNT(*) FROM deliveries GROUP BY status"))
                attempts = await conn.fetchval("SELECT COUNT(*) FROM attempts")
            finally:
                await conn.close()
            assert (statuses, attempts) == ({"succeeded": expected}, expected), log.read_text()[-3000:]
            held = await kapture_tickets(session, sandbox_port)
            threaded = sorted((t["taskTitle"], t["email"], t["comments"]) for t in held
                              if t["taskTitle"].startswith("Router down"))
            assert threaded == sorted((f"Router down {i}", f"customer{i}@example.com", [f"Still down {i}"])
                                      for i in range(threads))
            assert sum(t["taskTitle"].startswith("Website enquiry") for t in held) == 30
            metrics_auth = {"Authorization": f"Bearer {ENV['BRIDGE_METRICS_TOKEN']}"}
            async with session.get(f"http://127.0.0.1:{ports[0]}/metrics", headers=metrics_auth) as r:
                assert r.status == 200
            async with session.post(f"http://127.0.0.1:{ports[0]}/admin/api/destinations/demo-kapture/pause",
                                    headers=metrics_auth) as r:
                assert r.status == 403, await r.text()
    finally:
        for proc in [*procs, sandbox]:
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
