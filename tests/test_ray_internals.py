"""Each private Ray API of study/ray_internals.py, called on the installed Ray: an upgrade that
moves or changes one fails here, with a message naming it, not in a user's study."""

import copy

import jsonschema
import pytest
import ray
import yaml

from tests.conftest import REPO


def test_rays_offline_cluster_validation_is_where_study_ray_internals_calls_it():
    from study import ray_internals

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    try:
        prepared = ray_internals.prepared_cluster_config(copy.deepcopy(config))
    except (ImportError, AttributeError, TypeError) as e:
        pytest.fail(
            f"Ray {ray.__version__} changed ray.autoscaler._private.util.prepare_config / "
            f"validate_config ({type(e).__name__}: {e}); update "
            "study/ray_internals.py:prepared_cluster_config"
        )
    assert prepared["head_node_type"] in prepared["available_node_types"]  # defaults filled in
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["no_such_key"] = 1
    with pytest.raises(jsonschema.ValidationError):  # it still validates, not only prepares
        ray_internals.prepared_cluster_config(broken)
