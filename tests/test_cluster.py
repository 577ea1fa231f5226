"""cluster.yaml, validated offline the way `ray up` does before it contacts AWS."""

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray
import torch
import yaml

from tests.conftest import REPO


def _cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def _prepare_and_validate(config: dict) -> dict:
    """What `ray up` checks first; returns the prepared config (defaults filled in)."""
    from study.ray_internals import prepared_cluster_config

    return prepared_cluster_config(copy.deepcopy(config))


def test_cluster_yaml_passes_rays_schema_and_config_preparation():
    schema = Path(ray.autoscaler.__file__).with_name("ray-schema.json")
    jsonschema.validate(_cluster(), json.loads(schema.read_text()))
    prepared = _prepare_and_validate(_cluster())
    types = prepared["available_node_types"]
    head, worker = types[prepared["head_node_type"]], types["gpu_worker"]
    assert prepared["provider"]["type"] == "aws"
    assert head["resources"].get("GPU", 0) == 0
    assert worker["resources"]["GPU"] >= 1 and worker["min_workers"] == 0
    assert worker["max_workers"] >= 1
    assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"


def test_dashboard_is_bound_to_localhost_and_versions_are_pinned():
    cfg = _cluster()
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in yaml.dump(cfg)
    assert cfg["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-py311")
    setup = " ".join(cfg["setup_commands"])
    assert f"torch=={torch.__version__.split('+')[0]}" in setup
    assert "pip install --quiet -e /home/ray/lime-robust-study" in setup


def _broken(kind: str) -> dict:
    cfg = _cluster()
    if kind == "unknown key":
        cfg["available_node_types"]["gpu_worker"]["max_gpus"] = 4
    elif kind == "unknown head type":
        cfg["head_node_type"] = "cpu_head"
    elif kind == "fractional GPU count":
        cfg["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    elif kind == "unknown top-level key":
        cfg["dashboard_port"] = 8265
    return cfg


@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("unknown key", "max_gpus"),
        ("unknown head type", "head_node_type"),
        ("fractional GPU count", "0.5"),
        ("unknown top-level key", "dashboard_port"),
    ],
)
def test_broken_variants_are_rejected(kind, fragment):
    with pytest.raises((jsonschema.ValidationError, ValueError)) as info:
        _prepare_and_validate(_broken(kind))
    assert fragment in str(info.value).splitlines()[0]
