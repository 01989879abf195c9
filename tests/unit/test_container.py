"""The container files: no Docker engine runs here, so check what can be checked."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ess.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_runs_ess_serve_as_non_root_with_data_volume_and_healthcheck() -> None:
    text = dockerfile()
    stages = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert len(stages) >= 2 and all(s.startswith("python:3.11-slim") for s in stages)
    assert re.search(r"^USER\s+(?!root|0\b)\S+", text, flags=re.M)
    assert re.search(r'^VOLUME\s+\["/data"\]', text, flags=re.M)
    assert re.search(r"^EXPOSE\s+8080\s+8081\s*$", text, flags=re.M)
    assert "HEALTHCHECK" in text and "/health/live" in text
    assert re.search(r'^CMD\s+\["ess",\s*"serve"\]', text, flags=re.M)


def test_dockerfile_installs_like_the_readme() -> None:
    """The image installs the project with pip into a virtual environment, as `make` does."""
    text = dockerfile()
    assert "python -m venv" in text
    assert "pip install --no-cache-dir ." in text
    for package in ("amqp", "actors", "web", "ess"):
        assert f"COPY {package} ./{package}" in text


def test_compose_wires_rabbitmq_and_the_service() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"rabbitmq", "ess"}
    ess = services["ess"]
    assert ess["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert {"8080:8080", "8081:8081"} <= set(ess["ports"])
    assert "5672:5672" in services["rabbitmq"]["ports"]
    env = ess["environment"]
    assert env["ESS_AMQP_URL"].startswith("amqp://") and "@rabbitmq:5672" in env["ESS_AMQP_URL"]
    assert env["ESS_DATABASE"].startswith("/data/")
    # Every variable the compose file sets is one the service accepts.
    config = load_config({key: str(value) for key, value in env.items()})
    assert config.database.parent.as_posix() == "/data"
    assert any(volume.endswith(":/data") for volume in ess["volumes"])
