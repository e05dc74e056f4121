"""The package installs what launch files, plugin.xml and users name, in a plain venv and colcon.

Builds the package with colcon (from PyPI) in a temporary workspace and checks the installed
tree: every console script in lib/genpolicy_ros, launch/config/urdf in share/, the ament index
marker, and every executable and parameter file the launch files name (read from their source).
"""

import ast
import configparser
from importlib import import_module
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys

from conftest import REPO_ROOT
import pytest


def _console_scripts():
    tree = ast.parse((REPO_ROOT / 'setup.py').read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == 'console_scripts':
                    return [ast.literal_eval(v) for v in value.elts]
    raise AssertionError('setup.py declares no console_scripts')


def _scripts():
    return {s.split('=')[0].strip(): s.split('=')[1].strip() for s in _console_scripts()}


def _launch_references():
    """Return the (executables, config files) the launch files' source names."""
    executables, configs = set(), set()
    for launch in sorted((REPO_ROOT / 'launch').glob('*_launch.py')):
        src = launch.read_text()
        executables |= set(re.findall(r"executable\s*=\s*'([^']+)'", src))
        configs |= set(re.findall(r"'([A-Za-z0-9_]+\.yaml)'", src))
    return executables, configs


@pytest.mark.parametrize('name,target', sorted(_scripts().items()))
def test_console_script_target_exists(name, target):
    module, func = target.split(':')
    mod = import_module(module)
    assert callable(getattr(mod, func)), f'{name} -> {target} is not callable'


def test_setup_cfg_installs_scripts_where_ros2_run_looks():
    cfg = configparser.ConfigParser()
    cfg.read(REPO_ROOT / 'setup.cfg')
    assert cfg['develop']['script_dir'] == '$base/lib/genpolicy_ros'
    assert cfg['install']['install_scripts'] == '$base/lib/genpolicy_ros'


def test_launch_files_name_only_existing_things():
    executables, configs = _launch_references()
    assert executables, 'launch files name no executables'
    scripts = _scripts()
    for exe in executables:
        assert exe in scripts, f'launch file names executable {exe!r} that setup.py lacks'
    for cfg in configs:
        assert (REPO_ROOT / 'config' / cfg).is_file(), f'launch file names missing config/{cfg}'


@pytest.mark.timeout(300)
def test_colcon_build_installs_the_package(tmp_path):
    colcon = (shutil.which('colcon', path=str(Path(sys.executable).parent))
              or shutil.which('colcon'))
    if colcon is None:
        pytest.skip('colcon is not installed (pip install colcon-common-extensions)')
    (tmp_path / 'src').mkdir()
    os.symlink(REPO_ROOT, tmp_path / 'src' / 'genpolicy_ros')
    proc = subprocess.run(
        [colcon, 'build', '--build-base', 'build', '--install-base', 'install',
         '--event-handlers', 'console_direct-'],
        cwd=tmp_path, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    prefix = tmp_path / 'install' / 'genpolicy_ros'
    share = prefix / 'share' / 'genpolicy_ros'
    assert (prefix / 'share' / 'ament_index' / 'resource_index' / 'packages'
            / 'genpolicy_ros').is_file()
    assert (share / 'package.xml').is_file()
    for name in _scripts():
        exe = prefix / 'lib' / 'genpolicy_ros' / name
        assert exe.is_file() and os.access(exe, os.X_OK), f'{exe} not installed'
    for sub in ('launch', 'config', 'urdf'):
        for src in (REPO_ROOT / sub).iterdir():
            if src.is_file() and not src.name.startswith('.'):
                if sub == 'launch' and not src.name.endswith('_launch.py'):
                    continue
                assert (share / sub / src.name).is_file(), f'{sub}/{src.name} not installed'
    if (REPO_ROOT / 'plugin.xml').exists():
        assert (share / 'plugin.xml').is_file()
    executables, configs = _launch_references()
    for exe in executables:
        assert (prefix / 'lib' / 'genpolicy_ros' / exe).is_file()
    for cfg in configs:
        assert (share / 'config' / cfg).is_file()
    site = list((prefix / 'lib').glob('python3*/site-packages/genpolicy_ros/__init__.py'))
    assert site, 'the Python package was not installed'


def _launch_node_overrides():
    """Yield (launch file, node name, YAML file, override keys) for every launch_ros Node."""
    for launch in sorted((REPO_ROOT / 'launch').glob('*_launch.py')):
        tree = ast.parse(launch.read_text())
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and getattr(call.func, 'id', '') == 'Node'):
                continue
            kw = {k.arg: k.value for k in call.keywords}
            if 'parameters' not in kw:
                continue
            name = ast.literal_eval(kw['name'])
            yaml_files, keys = [], []
            for item in kw['parameters'].elts:
                if isinstance(item, ast.Call) and item.args:
                    yaml_files.append(ast.literal_eval(item.args[0]))
                elif isinstance(item, ast.Dict):
                    keys += [ast.literal_eval(k) for k in item.keys]
            yield launch.name, name, yaml_files, keys


def test_launch_parameter_overrides_are_declared_in_the_nodes_yaml():
    # A launch file overriding a parameter the node does not declare would be silently ignored
    # (or, for a typo, fail only on the robot): every override key must be in the node's YAML.
    from genpolicy_ros.nodes.params import load_node_params
    seen = set()
    for launch, name, yaml_files, keys in _launch_node_overrides():
        assert len(yaml_files) == 1, f'{launch}: {name} should take exactly one config YAML'
        declared = load_node_params(yaml_files[0], name)
        for key in keys:
            assert key in declared, f'{launch}: {name} overrides {key!r}, not in {yaml_files[0]}'
        seen.add((launch, name))
    assert ('real_launch.py', 'driver_node') in seen and ('sim_launch.py', 'sim_node') in seen


def test_real_launch_needs_a_robot_ip_and_enforces_realtime_by_default():
    src = (REPO_ROOT / 'launch' / 'real_launch.py').read_text()
    tree = ast.parse(src)
    args = {}
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, 'id', '') == 'DeclareLaunchArgument':
            kw = {k.arg: k.value for k in call.keywords}
            args[ast.literal_eval(call.args[0])] = (
                ast.literal_eval(kw['default_value']) if 'default_value' in kw else None)
    assert args['robot_ip'] is None, 'robot_ip must be given, never defaulted'
    assert args['realtime_config'] == 'enforce'
    assert {'camera', 'video_device', 'camera_image_topic', 'operator_view'} <= set(args)
