"""Strict reading of parameter mappings into config dataclasses (no defaults, no guessing).

The YAML under ``config/`` is the one definition of every default, so a missing or unknown key
is an error, and values must already have the type a ROS 2 parameter of that name will have
(``2`` is not a valid double parameter in ROS 2, so it is not accepted for a float here either).
"""

import dataclasses
from typing import Any, Dict, Mapping, get_type_hints

_ROS_SCALARS = (bool, int, float, str)


def take(params: Mapping[str, Any], cls: type, section: str) -> Dict[str, Any]:
    """Return ``params`` checked against the fields of dataclass ``cls``.

    Raises ``ValueError`` naming ``section`` for missing or unknown keys and ``TypeError`` for
    values whose type differs from the field's annotation (bool, int, float or str).
    """
    if not isinstance(params, Mapping):
        raise TypeError(f'{section}: expected a mapping, got {type(params).__name__}')
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in params]
    unknown = [k for k in params if k not in names]
    if missing:
        raise ValueError(f'{section}: missing parameter(s) {missing}')
    if unknown:
        raise ValueError(f'{section}: unknown parameter(s) {unknown}')
    out = {}
    for name in names:
        value = params[name]
        expected = hints[name]
        if expected in _ROS_SCALARS:
            # bool is a subclass of int in Python; a ROS parameter is one or the other.
            if type(value) is not expected:
                raise TypeError(f'{section}.{name}: expected {expected.__name__}, got '
                                f'{type(value).__name__} ({value!r})')
        out[name] = value
    return out
