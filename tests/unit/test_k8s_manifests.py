"""Kubernetes manifests: valid against the Kubernetes schemas (offline), consistent with the code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streamrec.cli import build_parser
from streamrec.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
DOCS = [(f, doc) for f in KUSTOMIZATION["resources"] for doc in yaml.safe_load_all((K8S / f).read_text()) if doc]
BY_KIND: dict[str, list[dict]] = {}
for _, doc in DOCS:
    BY_KIND.setdefault(doc["kind"], []).append(doc)
DEPLOYMENTS = {d["metadata"]["name"]: d for d in BY_KIND["Deployment"]}
CONFIG = BY_KIND["ConfigMap"][0]["data"]
PORTS = {"worker": "worker_port", "serve": "scorer_port", "learn": "learner_port"}


def test_kustomization_lists_every_manifest():
    assert sorted(KUSTOMIZATION["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("name,doc", [(f"{f}:{d['kind']}/{d['metadata']['name']}", d) for f, d in DOCS])
def test_valid_against_the_kubernetes_schema(name, doc):
    import kubernetes_validate

    kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_settings_in_the_config_map_exist():
    Settings.from_env(CONFIG)


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_each_deployment_runs_a_real_command_with_probes_on_its_port(name):
    pod = DEPLOYMENTS[name]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = build_parser().parse_args(container["args"])
    assert callable(args.func)
    port = getattr(Settings(), PORTS[container["args"][0]])
    assert container["ports"][0]["containerPort"] == port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    Settings.from_env({**CONFIG, **env})
    assert DEPLOYMENTS[name]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)


def test_scorers_match_the_partitions_and_the_gpu_variant_asks_for_a_gpu():
    partitions = int(CONFIG["STREAMREC_TOPIC_PARTITIONS"])
    scorers = [d for d in DEPLOYMENTS.values() if d["spec"]["template"]["spec"]["containers"][0]["args"] == ["serve"]]
    assert sum(d["spec"]["replicas"] for d in scorers) == partitions
    assert DEPLOYMENTS["worker"]["spec"]["replicas"] <= partitions
    gpu = DEPLOYMENTS["scorer-gpu"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "STREAMREC_DEVICE", "value": "cuda"} in gpu["env"]
    assert DEPLOYMENTS["learner"]["spec"]["replicas"] == 1


def test_every_deployment_has_a_disruption_budget_and_services_select_pods():
    budgets = {tuple(sorted(b["spec"]["selector"]["matchLabels"].items())) for b in BY_KIND["PodDisruptionBudget"]}
    for d in DEPLOYMENTS.values():
        assert tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) in budgets
    for svc in BY_KIND["Service"]:
        selector = svc["spec"]["selector"]
        assert any(selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
                   for d in DEPLOYMENTS.values()), f"service {svc['metadata']['name']} selects no pod"


def test_registry_volume_is_shared_by_scorers_and_learner():
    claim = BY_KIND["PersistentVolumeClaim"][0]["metadata"]["name"]
    for name in ("scorer", "scorer-gpu", "learner"):
        pod = DEPLOYMENTS[name]["spec"]["template"]["spec"]
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim
        assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == CONFIG["STREAMREC_REGISTRY_URI"]
