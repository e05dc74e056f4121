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
