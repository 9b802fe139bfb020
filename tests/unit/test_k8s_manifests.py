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
KEDA = "keda.sh/v1alpha1"
# A ScaledObject and its kafka trigger as KEDA 2.x documents them (keda.sh, "Scaling Deployments" and the Apache
# Kafka scaler), written here as a JSON schema: the fields these manifests use, their types, and no others.
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_COUNT = {"type": "integer", "minimum": 0}
SCALED_OBJECT = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": KEDA}, "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string"}, "labels": _STRING_MAP}},
        "spec": {"type": "object", "required": ["scaleTargetRef", "triggers"], "additionalProperties": False,
                 "properties": {
                     "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                        "properties": {"name": {"type": "string"}, "kind": {"type": "string"},
                                                       "apiVersion": {"type": "string"}}},
                     "minReplicaCount": _COUNT, "maxReplicaCount": _COUNT, "idleReplicaCount": _COUNT,
                     "pollingInterval": _COUNT, "cooldownPeriod": _COUNT,
                     "advanced": {"type": "object", "properties": {"horizontalPodAutoscalerConfig": {
                         "type": "object", "properties": {"behavior": {"type": "object"}}}}},
                     "triggers": {"type": "array", "minItems": 1, "items": {
                         "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
                         "properties": {"type": {"type": "string"}, "metadata": _STRING_MAP,
                                        "authenticationRef": {"type": "object", "required": ["name"]}}}}}},
    },
}
KAFKA_TRIGGER = {"type": "object", "required": ["bootstrapServers", "consumerGroup", "topic", "lagThreshold"],
                 "additionalProperties": False,
                 "properties": {k: {"type": "string"} for k in (
                     "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
                     "offsetResetPolicy", "allowIdleConsumers", "limitToPartitionsWithLag",
                     "scaleToZeroOnInvalidOffset", "excludePersistentLag", "version", "sasl", "tls")}}


def test_kustomization_lists_every_manifest():
    assert sorted(KUSTOMIZATION["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("name,doc", [(f"{f}:{d['kind']}/{d['metadata']['name']}", d) for f, d in DOCS
                                      if d["apiVersion"] != KEDA])
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


@pytest.mark.parametrize("name", [d["metadata"]["name"] for d in BY_KIND["ScaledObject"]])
def test_autoscaling_follows_the_right_group_and_topic_within_the_partitions(name):
    import jsonschema

    from streamrec.stream import topics

    scaled = next(d for d in BY_KIND["ScaledObject"] if d["metadata"]["name"] == name)
    jsonschema.validate(scaled, SCALED_OBJECT)
    spec = scaled["spec"]
    target = DEPLOYMENTS[spec["scaleTargetRef"]["name"]]
    command = target["spec"]["template"]["spec"]["containers"][0]["args"][0]
    group, topic = {"worker": (topics.WORKER_GROUP, topics.EVENTS),
                    "serve": (topics.SCORER_GROUP, topics.SCORE_REQUESTS)}[command]
    settings = Settings.from_env(CONFIG)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    jsonschema.validate(trigger["metadata"], KAFKA_TRIGGER)
    meta = trigger["metadata"]
    assert meta["bootstrapServers"] == settings.kafka_bootstrap
    assert meta["consumerGroup"] == topics.group_id(settings, group)  # the lag KEDA reads is the service's own
    assert meta["topic"] == settings.topic(topic)
    assert int(meta["lagThreshold"]) > 0
    assert 1 <= spec["minReplicaCount"] <= target["spec"]["replicas"] <= spec["maxReplicaCount"]
    assert spec["maxReplicaCount"] <= settings.topic_partitions  # past the partitions a replica stands idle


def test_the_keda_schema_here_refuses_what_keda_would():
    import jsonschema

    good = next(iter(BY_KIND["ScaledObject"]))
    for broken in ({**good, "spec": {**good["spec"], "maxReplicas": 3}},
                   {**good, "spec": {**good["spec"], "minReplicaCount": "2"}},
                   {**good, "spec": {k: v for k, v in good["spec"].items() if k != "scaleTargetRef"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCALED_OBJECT)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good["spec"]["triggers"][0]["metadata"], "lagThreshold": 5}, KAFKA_TRIGGER)
