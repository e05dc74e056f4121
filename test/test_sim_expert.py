"""Push task sampling, IK controller, scripted expert and the lock-step episode runner."""

import numpy as np
import pytest

from genpolicy_ros.drivers.pybullet_backend import PyBulletBackend
from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.episode import run_episode
from genpolicy_ros.sim.expert import ScriptedPushExpert
from genpolicy_ros.sim.ik_controller import IKController
from genpolicy_ros.sim.task import EVAL_SEED_START, PushTask
from genpolicy_ros.sim.world import PandaWorld


@pytest.fixture(scope='module')
def config():
    """Provide the config fixture."""
    return SimConfig.load()


@pytest.fixture(scope='module')
def rig(config):
    """Provide the rig fixture."""
    backend = PyBulletBackend(PandaWorld(config))
    controller = IKController(config)
    expert = ScriptedPushExpert(config.expert, config.task.tcp_push_z_m)
    yield backend, controller, expert
    controller.close()
    backend.close()


def test_task_sampling_is_seeded_and_in_range(config):
    """Check: task sampling is seeded and in range."""
    task = PushTask(config.task)
    cfg = config.task
    assert EVAL_SEED_START == 100000
    for seed in list(range(50)) + [EVAL_SEED_START + 3]:
        spec = task.sample(seed)
        for xy in (spec.cube_xy, spec.goal_xy):
            assert cfg.workspace_x_m[0] <= xy[0] <= cfg.workspace_x_m[1]
            assert cfg.workspace_y_m[0] <= xy[1] <= cfg.workspace_y_m[1]
        assert np.linalg.norm(spec.goal_xy - spec.cube_xy) >= cfg.min_cube_goal_distance_m
        assert np.linalg.norm(spec.cube_xy - spec.ee_start_xy) >= cfg.min_start_cube_distance_m
    np.testing.assert_array_equal(task.sample(11).goal_xy, task.sample(11).goal_xy)
    assert task.is_success([0.5, 0.0], [0.5 + cfg.success_tolerance_m * 0.9, 0.0])
    assert not task.is_success([0.5, 0.0], [0.5 + cfg.success_tolerance_m * 1.1, 0.0])
    assert task.max_decision_steps(10.0) == int(round(cfg.time_limit_s * 10))


def test_ik_controller_reaches_target_and_rejects_nan(rig, config):
    """Check: ik controller reaches target and rejects nan."""
    backend, controller, _ = rig
    backend.world.reset(0)
    backend.reset_watchdog()
    controller.reset(backend.read_state())
    target = np.array([0.5, 0.1, config.task.tcp_push_z_m])
    dt = 1.0 / config.control_hz
    for _ in range(250):
        q_cmd, dq_cmd = controller.command(backend.read_state(), target)
        assert q_cmd.shape == dq_cmd.shape == (7,)
        assert np.all(np.abs(dq_cmd) <= np.asarray(config.arm.velocity_limits_radps) + 1e-9)
        backend.command(q_cmd, dq_cmd)
        backend.advance(dt)
    np.testing.assert_allclose(backend.world.ee_pose()[0], target, atol=2e-3)
    with pytest.raises(ValueError):
        controller.command(backend.read_state(), np.array([np.nan, 0.0, 0.1]))
    with pytest.raises(ValueError):
        controller.command(backend.read_state(), np.zeros(2))


@pytest.mark.parametrize('seed', [EVAL_SEED_START, EVAL_SEED_START + 1, EVAL_SEED_START + 2])
def test_expert_succeeds(rig, config, seed):
    """Check: expert succeeds."""
    backend, controller, expert = rig
    result = run_episode(backend, expert, controller, seed, render=False)
    assert result.success, f'seed {seed}: cube {result.final_distance_m:.3f} m from goal'
    assert result.final_distance_m <= config.task.success_tolerance_m
    assert 0 < result.steps < backend.world.task.max_decision_steps(config.decision_hz)
    for rec in result.records:
        step = np.linalg.norm(rec.action[:2] - rec.obs['ee_pos'][:2])
        assert step <= config.expert.max_step_m + 1e-9
        assert rec.action[2] == pytest.approx(config.task.tcp_push_z_m)
    times = [rec.obs['time_s'] for rec in result.records]
    np.testing.assert_allclose(np.diff(times), 1.0 / config.decision_hz, atol=1e-9)
    # Fingertips stay near the push height throughout (no diving into the table).
    heights = [rec.obs['ee_pos'][2] for rec in result.records]
    np.testing.assert_allclose(heights, config.task.tcp_push_z_m, atol=5e-3)


def test_noise_changes_execution_not_labels(rig, config):
    """Check: noise changes execution not labels."""
    backend, controller, expert = rig
    result = run_episode(backend, expert, controller, 4, noise_std_m=0.01, max_steps=10,
                         render=True)
    assert len(result.records) == 10
    offsets = np.array([r.executed[:2] - r.action[:2] for r in result.records])
    assert 0.003 < np.std(offsets) < 0.02
    first = result.records[0].obs['image']
    assert first.shape == (config.camera.height_px, config.camera.width_px, 3)
    assert first.dtype == np.uint8


@pytest.mark.slow
def test_expert_on_100_held_out_seeds(rig, request):
    """Check: the expert pushes >= 98 of 100 held-out tasks home (run with -m slow)."""
    if 'slow' not in (request.config.option.markexpr or ''):
        pytest.skip('slow: run with -m slow')
    backend, controller, expert = rig
    seeds = range(EVAL_SEED_START, EVAL_SEED_START + 100)
    successes = sum(run_episode(backend, expert, controller, s, render=False).success
                    for s in seeds)
    assert successes >= 98
