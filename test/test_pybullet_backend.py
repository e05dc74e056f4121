"""PyBulletBackend: the ArmBackend contract (validation, hold, watchdog, time stamps)."""

import numpy as np
import pytest

from genpolicy_ros.drivers.backend import ArmBackend, ArmState, validate_joint_command
from genpolicy_ros.drivers.pybullet_backend import PyBulletBackend
from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.world import PandaWorld


@pytest.fixture(scope='module')
def world():
    """Provide one simulated world for the module (reset by every test)."""
    w = PandaWorld(SimConfig.load())
    yield w
    w.close()


@pytest.fixture
def backend(world):
    """Provide a backend on a freshly reset world."""
    world.reset(0)
    b = PyBulletBackend(world)
    yield b
    b.close()


def test_is_an_arm_backend(backend):
    """Check: is an arm backend."""
    assert isinstance(backend, ArmBackend)
    assert backend.joint_names == [f'panda_joint{i}' for i in range(1, 8)]
    state = backend.read_state()
    assert isinstance(state, ArmState)
    assert state.q.shape == state.dq.shape == state.tau.shape == (7,)
    assert state.gripper_width == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize('q, dq', [
    (np.full(7, np.nan), np.zeros(7)),
    (np.zeros(7), np.array([0, 0, np.inf, 0, 0, 0, 0.0])),
    (np.zeros(6), np.zeros(7)),
    (np.zeros(7), np.zeros(8)),
    (np.zeros((7, 1)), np.zeros(7)),
    (['a'] * 7, np.zeros(7)),
])
def test_rejects_bad_commands_before_touching_the_arm(backend, q, dq):
    """Check: rejects bad commands before touching the arm."""
    q0 = backend.read_state().q
    backend.command(q0, np.zeros(7))
    with pytest.raises(ValueError):
        backend.command(q, dq)
    backend.advance(0.05)
    np.testing.assert_allclose(backend.read_state().q, q0, atol=1e-3)


def test_validate_joint_command_returns_copies():
    """Check: validate joint command returns copies."""
    q = np.arange(7.0)
    q_out, dq_out = validate_joint_command(q, np.zeros(7))
    q_out[0] = 99.0
    assert q[0] == 0.0 and dq_out.dtype == float


def test_stamp_follows_simulated_time(backend):
    """Check: stamp follows simulated time."""
    t0 = backend.read_state().stamp
    backend.advance(0.1)
    assert backend.read_state().stamp == pytest.approx(t0 + 0.1)


def test_stop_holds_the_current_position(backend):
    """Check: stop holds the current position."""
    q = backend.read_state().q
    target = q.copy()
    target[0] += 0.5
    for _ in range(5):  # moving toward the target when stop() arrives
        backend.command(target, np.zeros(7))
        backend.advance(0.01)
    assert abs(backend.read_state().dq[0]) > 0.1
    backend.stop()
    q_stop = backend.read_state().q
    backend.advance(1.0)
    state = backend.read_state()
    np.testing.assert_allclose(state.q, q_stop, atol=0.02)
    np.testing.assert_allclose(state.dq, 0.0, atol=1e-2)
    assert state.q[0] < target[0] - 0.3


def test_watchdog_holds_when_commands_stop(backend):
    """Check: watchdog holds when commands stop."""
    q = backend.read_state().q
    target = q.copy()
    target[0] += 1.0
    backend.command(target, np.zeros(7))
    backend.advance(0.5)  # only the first command_timeout_s of motion is allowed
    assert backend.timed_out
    state = backend.read_state()
    assert state.q[0] < target[0] - 0.5
    np.testing.assert_allclose(state.dq, 0.0, atol=0.05)
    backend.command(target, np.zeros(7))
    assert not backend.timed_out
