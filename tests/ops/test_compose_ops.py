"""docker-compose.yml wires operations: JSON logs, one metrics directory for workers and shim."""

from __future__ import annotations

from typing import Any

from tests.test_compose import compose_config  # noqa: F401  (the `docker-compose config` fixture)

COUNTING = ("worker", "worker-maintenance", "shim")


def test_workers_and_shim_share_one_prometheus_directory(compose_config: dict[str, Any]) -> None:  # noqa: F811
    services = compose_config["services"]
    for name in COUNTING:
        env = services[name]["environment"]
        assert env["PROMETHEUS_MULTIPROC_DIR"] == "/var/lib/bflow/prometheus", name
        mounts = {m.split(":")[0]: m.split(":")[1] for m in services[name]["volumes"]}
        assert mounts["metrics"] == "/var/lib/bflow", name
    # Flower and Beat keep their own state and must not write into the shim's samples.
    for name in ("flower", "beat"):
        assert "PROMETHEUS_MULTIPROC_DIR" not in services[name].get("environment", {}), name


def test_every_bflow_process_logs_json_and_the_shim_has_a_healthcheck(compose_config: dict[str, Any]) -> None:  # noqa: F811
    services = compose_config["services"]
    for name in ("worker", "worker-maintenance", "beat", "shim", "flower"):
        assert services[name]["environment"]["BFLOW_LOG_FORMAT"] == "json", name
    assert "/api/v1/health/ready" in " ".join(services["shim"]["healthcheck"]["test"])
