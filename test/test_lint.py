"""flake8 (line length 99, pep257 docstrings via flake8-docstrings) over all project code."""

import subprocess
import sys

from conftest import REPO_ROOT

TARGETS = ['genpolicy_ros', 'test', 'benchmarks', 'launch', 'setup.py']


def test_flake8_clean():
    targets = [t for t in TARGETS if (REPO_ROOT / t).exists()]
    proc = subprocess.run([sys.executable, '-m', 'flake8', *targets], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f'flake8 found problems:\n{proc.stdout}{proc.stderr}'
