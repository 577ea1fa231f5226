"""The private Ray API this project relies on, in one place, with why no public API serves.

tests/test_ray_internals.py calls each one on the installed Ray and fails with a message that
names it when an upgrade moves or changes it. Everything else uses public APIs: a configuration
stopped early reaches Optuna through OptunaSearch.on_trial_complete(result=None), which records
it as PRUNED (study/replicates.py).
"""

from typing import Any


def prepared_cluster_config(config: dict[str, Any]) -> dict[str, Any]:
    """`ray up`'s own preparation (defaults filled in) and schema validation of a cluster
    config, offline; returns the prepared config. Private (ray.autoscaler._private.util):
    `ray up` itself needs the cloud SDK and credentials before it validates, and Ray has no
    public validator. Raises jsonschema.ValidationError, or ValueError / KeyError /
    RuntimeError from the preparation."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(config)
    validate_config(prepared)
    return prepared
