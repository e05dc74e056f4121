"""ROS 2 message definitions for MCAP schemas, built the way rosbag2 builds them.

An MCAP ``ros2msg`` schema is the ``.msg`` text of the type followed by the text of every type it
uses, each after a ``====`` line and ``MSG: pkg/Type``. Foxglove, ``ros2 bag`` and
``mcap_ros2.reader`` decode messages from that text alone, so it must be complete. The ``.msg``
files ship in ``share/<pkg>/msg`` of every ROS 2 install (system, colcon or PyPI wheels); no
rclpy is needed to find them.
"""

from functools import lru_cache
import importlib
import os
from pathlib import Path
import re
import sys
from typing import Dict, Iterator, List, Optional, Tuple

PRIMITIVES = {
    'bool', 'byte', 'char', 'float32', 'float64', 'int8', 'uint8', 'int16', 'uint16', 'int32',
    'uint32', 'int64', 'uint64', 'string', 'wstring',
}
SEPARATOR = '=' * 80


def split_type(type_name: str) -> Tuple[str, str]:
    """Split ``pkg/msg/Type`` or ``pkg/Type`` into ``(pkg, Type)``."""
    parts = type_name.split('/')
    if len(parts) == 3 and parts[1] == 'msg':
        return parts[0], parts[2]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ValueError(f'not a ROS 2 message type name: {type_name!r} (want pkg/msg/Type)')


def full_type_name(type_name: str) -> str:
    """Normalise a type name to the ``pkg/msg/Type`` form rosbag2 stores."""
    pkg, name = split_type(type_name)
    return f'{pkg}/msg/{name}'


def import_message(type_name: str) -> type:
    """Import the Python class of ``pkg/msg/Type`` (e.g. ``sensor_msgs/msg/JointState``)."""
    pkg, name = split_type(type_name)
    module = importlib.import_module(f'{pkg}.msg')
    try:
        return getattr(module, name)
    except AttributeError as exc:
        raise ValueError(f'{pkg}.msg has no message {name!r}') from exc


def _search_roots(pkg: str) -> Iterator[Path]:
    """Yield candidate ``share`` directories for ``pkg``, most authoritative first."""
    for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        if prefix:
            yield Path(prefix) / 'share'
    # PyPI wheels and plain installs: share/ sits a few levels above the Python module.
    try:
        module_dir = Path(importlib.import_module(pkg).__file__).resolve().parent
        for parent in module_dir.parents:
            yield parent / 'share'
    except (ImportError, TypeError):
        pass
    yield Path(sys.prefix) / 'share'


@lru_cache(maxsize=None)
def msg_file_text(type_name: str) -> str:
    """Return the raw ``.msg`` text of ``type_name``; raises FileNotFoundError if absent."""
    pkg, name = split_type(type_name)
    tried: List[str] = []
    for share in _search_roots(pkg):
        candidate = share / pkg / 'msg' / f'{name}.msg'
        if candidate.is_file():
            return candidate.read_text(encoding='utf-8')
        tried.append(str(candidate))
    raise FileNotFoundError(f'no {pkg}/msg/{name}.msg found; looked in {tried[:4]}...')


def _field_types(pkg: str, text: str) -> List[str]:
    """Return the complex (non-primitive) field types used by one ``.msg`` text, in order."""
    types: List[str] = []
    for raw in text.splitlines():
        line = raw.split('#', 1)[0].strip()
        if not line:
            continue
        token = line.split()[0]
        if re.match(r'^\S+\s+\w+\s*=', line):
            continue  # a constant: primitive by definition
        base = re.sub(r'\[.*\]$', '', token)          # strip array suffix [] [N] [<=N]
        base = re.sub(r'<=\d+$', '', base)            # strip bounded string bound
        if base in PRIMITIVES:
            continue
        dep = base if '/' in base else f'{pkg}/{base}'
        dep_pkg, dep_name = split_type(dep)
        types.append(f'{dep_pkg}/{dep_name}')
    return types


@lru_cache(maxsize=None)
def message_definition(type_name: str) -> str:
    """Return the full rosbag2-style definition of ``type_name`` (its text plus dependencies).

    Dependencies are listed once each, depth first, in the order they first appear.
    """
    pkg, name = split_type(type_name)
    root = f'{pkg}/{name}'
    texts: Dict[str, str] = {}
    order: List[str] = []

    def visit(t: str) -> None:
        if t in texts:
            return
        text = msg_file_text(t)
        texts[t] = text
        if t != root:
            order.append(t)
        t_pkg, _ = split_type(t)
        for dep in _field_types(t_pkg, text):
            visit(dep)

    visit(root)
    parts = [texts[root].rstrip('\n')]
    for dep in order:
        parts.append(f'{SEPARATOR}\nMSG: {dep}\n{texts[dep].rstrip(chr(10))}')
    return '\n'.join(parts) + '\n'


def check_definition(type_name: str, definition: Optional[str] = None) -> None:
    """Raise ValueError unless ``mcap_ros2`` can build a decoder from the definition."""
    from mcap_ros2._dynamic import generate_dynamic

    definition = definition if definition is not None else message_definition(type_name)
    decoders = generate_dynamic(full_type_name(type_name), definition)
    if full_type_name(type_name) not in decoders:
        raise ValueError(f'mcap_ros2 could not parse the definition of {type_name}')
