"""docker-compose.yml, the Dockerfile and the Prometheus config agree with the code.

No Docker engine runs here, so the files are checked for what they reference:
CLI subcommands, settings, ports, scrape targets, files.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from streamrec.cli import build_parser
from streamrec.deploy.prometheus_config import SERVICE_PORTS, compose_config_text
from streamrec.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = {name: svc for name, svc in SERVICES.items() if "build" in svc}


def _env(svc: dict) -> dict[str, str]:
    env = svc.get("environment", {})
    return {k: str(v) for k, v in env.items()}


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_every_service_command_is_a_real_subcommand(name):
    command = APP_SERVICES[name]["command"]
    args = build_parser().parse_args(command)  # exits (SystemExit) on an unknown command
    assert callable(args.func)


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_every_setting_in_compose_exists(name):
    Settings.from_env(_env(APP_SERVICES[name]))  # raises on an unknown STREAMREC_* variable


def test_the_three_services_are_there_and_expose_their_ports():
    defaults = Settings()
    for service, field in SERVICE_PORTS.items():
        assert service in APP_SERVICES, f"docker-compose.yml lacks the {service} service"
        port = getattr(defaults, field)
        published = [str(p).split(":")[-1] for p in APP_SERVICES[service].get("ports", [])]
        assert str(port) in published, f"{service} must expose {port}"
        health = " ".join(APP_SERVICES[service]["healthcheck"]["test"])
        assert f":{port}/" in health


def test_prometheus_config_is_generated_from_the_code():
    committed = (ROOT / "deploy/prometheus/prometheus.yml").read_text()
    assert committed == compose_config_text(), "run `streamrec deploy prometheus-config > deploy/prometheus/prometheus.yml`"


def test_every_scrape_target_is_a_service_port():
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.split(":")
                assert host in APP_SERVICES, f"scrape target {target}: no such service"
                assert any(str(p).endswith(f":{port}") for p in APP_SERVICES[host]["ports"])


def test_mounted_files_exist():
    for name, svc in SERVICES.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_dockerfile_references_exist():
    text = (ROOT / "deploy/Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)", text, flags=re.M))
    for name, svc in APP_SERVICES.items():
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert svc["build"]["target"] in stages, f"{name}: no stage {svc['build']['target']}"
    copied = set()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
            copied.add(source)
    # The wheel is built from the copies: every folder pyproject.toml maps to a package must be among them.
    folders = set(re.findall(r'"streamrec[.\w]*" = "(\w+)"', (ROOT / "pyproject.toml").read_text()))
    assert folders and folders <= copied, f"the Dockerfile does not copy {sorted(folders - copied)}"
    extras = re.findall(r"streamrec-\*\.whl\)\[([a-z,]+)\]", text)
    pyproject = (ROOT / "pyproject.toml").read_text()
    for group in extras:
        for extra in group.split(","):
            assert re.search(rf"^{extra} = \[", pyproject, flags=re.M), f"no extra {extra}"
