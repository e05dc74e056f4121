"""Shared pytest set-up: offscreen Qt, a private ROS domain, the repository root on sys.path."""

import dataclasses
import os
from pathlib import Path
import sys
from typing import List

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')
# Keep test graphs apart from anything else on the machine (other runs, a user's demo).
os.environ.setdefault('ROS_DOMAIN_ID', str(100 + os.getpid() % 100))


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: List[pytest.Item]) -> None:
    """Run the fault-injection suite last (stable order otherwise).

    Its attacked graph (node processes on PyBullet, relays in this process) loads both cores
    while it runs; the process-graph tests (test_bringup, test_sim_node) must not share the
    machine with it. Its fixtures end it with its last test (package scope).
    """
    items[:] = sorted(items, key=lambda item: 'fault_injection' in item.keywords)


# Safety-filter fixtures (test modules that need other meanings of these names define their own).
@pytest.fixture(scope='module')
def model():
    """Return the robot model."""
    from genpolicy_ros.robot import FrankaModel
    return FrankaModel()


@pytest.fixture(scope='module')
def config():
    """Return the YAML config with a generous time budget.

    Timing is not under test here (the machine is shared): a generous budget keeps the loop on
    the QP path; the time-budget fallback has its own test.
    """
    from genpolicy_ros.safety.config import SafetyConfig
    return dataclasses.replace(SafetyConfig.load(), solve_time_budget_s=10.0)


# The franka-sim FCI server (one at a time: its port is fixed) for the Franka protocol tests.
from franka_sim_fixture import franka_sim, franka_sim_workdir  # noqa: E402,F401
