"""Opt-in variants of the push task, defined in ``config/task_variants.yaml``.

A variant replaces fields of the ``task:`` block of ``config/sim.yaml`` (e.g. the ``hard``
variant halves the success radius); ``default`` replaces nothing. Only the task changes: the
scene, camera and rendering are those of ``sim.yaml``, so the policy's observations look the
same in every variant.
"""

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from genpolicy_ros.config_io import read_ros_parameters
from genpolicy_ros.sim.config import SimConfig, TaskConfig

VARIANTS_FILE = 'task_variants.yaml'
VARIANTS_NODE = 'task_variants'
DEFAULT_VARIANT = 'default'


def variant_overrides(name: str, path: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """Return the task fields the variant ``name`` replaces; ``ValueError`` on bad names/keys."""
    variants = read_ros_parameters(VARIANTS_FILE, VARIANTS_NODE, path)
    if name not in variants:
        raise ValueError(f'unknown task variant {name!r}; known: {sorted(variants)}')
    overrides = dict(variants[name] or {})
    fields = {f.name for f in dataclasses.fields(TaskConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f'task variant {name!r} names unknown task fields {unknown}')
    return overrides


def variant_names(path: Optional[Union[str, Path]] = None) -> List[str]:
    """Return the names of the defined variants."""
    return sorted(read_ros_parameters(VARIANTS_FILE, VARIANTS_NODE, path))


def apply_task_variant(config: SimConfig, name: str,
                       path: Optional[Union[str, Path]] = None) -> SimConfig:
    """Return ``config`` with the task fields of variant ``name`` replaced (types checked)."""
    overrides = variant_overrides(name, path)
    if not overrides:
        return config
    params = dict(dataclasses.asdict(config.task), **overrides)
    return config.replace(task=TaskConfig.from_dict(params))
