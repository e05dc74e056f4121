"""Camera-content checks: novelty of frames to the policy encoder, frozen frames."""

import dataclasses

import numpy as np
import pytest

from genpolicy_ros.monitor.calibration import calibrate
from genpolicy_ros.monitor.gate import Mode
from genpolicy_ros.monitor.monitor import MonitorConfig, RuntimeMonitor
from genpolicy_ros.monitor.novelty import (CameraContentChecks, FEATURE_DEFINITION,
                                           FeatureNoveltyModel, run_statistic)
from genpolicy_ros.monitor.watchdogs import FaultKind
from genpolicy_ros.robot import FrankaModel
from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.world import PandaWorld

CHECKPOINT = 'push_flow_v1.pt'


@pytest.fixture(scope='module')
def frames():
    """Nominal frames of 170 task seeds, and the same scenes under a changed light."""
    world = PandaWorld(SimConfig.load())
    try:
        nominal, relit = [], []
        for seed in range(170):
            world.reset(seed)
            nominal.append(world.render())
        world.set_light(direction=(-0.6, -0.5, 0.6), color_rgb=(1.0, 0.7, 0.45), ambient=0.3,
                        diffuse=0.8, specular=0.2)
        for seed in range(150, 170):
            world.reset(seed)
            relit.append(world.render())
    finally:
        world.close()
    return np.stack(nominal), np.stack(relit)


@pytest.fixture(scope='module')
def model(frames):
    return FeatureNoveltyModel.fit(CHECKPOINT, frames[0][:150], shrinkage=0.05)


def test_run_statistic_is_the_level_k_frames_in_a_row_exceed():
    assert run_statistic([1, 5, 5, 5, 1], 3) == 5
    assert run_statistic([5, 1, 5, 5], 3) == 1
    assert run_statistic([2, 3, 4], 1) == 4
    assert run_statistic([9, 9], 3) == float('-inf')


def test_novel_light_is_far_from_the_training_features(model, frames):
    nominal, relit = frames
    held_out = model.distances(nominal[150:])  # scenes the fit never saw
    assert np.all(np.isfinite(held_out)) and held_out.max() < 2.0
    assert model.distances(relit).min() > 2.0 * held_out.max()


def test_model_round_trips_and_refuses_other_definitions(model, frames, tmp_path):
    path = model.save(tmp_path / 'novelty.npz')
    loaded = FeatureNoveltyModel.load(path)
    assert loaded.checkpoint == CHECKPOINT and loaded.n_fit == 150
    np.testing.assert_allclose(loaded.distances(frames[1][:3]), model.distances(frames[1][:3]),
                               rtol=1e-4)
    with np.load(path) as data:
        arrays = dict(data)
    arrays['definition'] = np.array('novelty-v0: something else')
    np.savez(tmp_path / 'old.npz', **arrays)
    with pytest.raises(ValueError, match='recalibrate'):
        FeatureNoveltyModel.load(tmp_path / 'old.npz')
    with pytest.raises(FileNotFoundError, match='genpolicy-calibrate'):
        FeatureNoveltyModel.load(tmp_path / 'none.npz')
    with pytest.raises(ValueError, match='too few'):
        FeatureNoveltyModel.fit(CHECKPOINT, frames[0][:20])


def test_frozen_frame_is_a_fault_only_while_the_arm_moves(frames):
    checks = CameraContentChecks(MonitorConfig.load().novelty, None, None)
    img = frames[0][0]
    q = np.zeros(7)
    for _ in range(5):  # arm still, same picture: nothing wrong
        checks.on_joint_positions(q)
        checks.on_frame(img)
    assert checks.active_faults() == []
    for i in range(15):  # the arm moves 0.15 rad, the picture does not change
        checks.on_joint_positions(q + 0.01 * (i + 1))
        checks.on_frame(img.copy())
    faults = checks.active_faults()
    assert [f.kind for f in faults] == [FaultKind.FROZEN_FRAME] and faults[0].hard
    checks.on_frame(frames[0][1])  # a live picture clears it
    assert checks.active_faults() == []


def test_monitor_holds_on_novel_frames_and_refuses_reset_while_they_last(model, frames):
    nominal, relit = frames
    config = MonitorConfig.load()
    config = dataclasses.replace(config, novelty=dataclasses.replace(
        config.novelty, hold_consecutive_frames=3))
    cal = calibrate([[0.1]] * 19, 0.1, CHECKPOINT, config.consistency.definition(),
                    [1.5] * 19, FEATURE_DEFINITION, 'novelty.npz')
    limits = FrankaModel().limits
    monitor = RuntimeMonitor(config, limits.velocity, limits.acceleration, cal, model)
    q = np.zeros(7)
    t = 0.0

    def tick(image):
        nonlocal t
        for _ in range(7):  # 15 Hz camera, 100 Hz joint states and commands
            t += 0.01
            monitor.on_joint_state(q, q, t, t)
            monitor.on_safe_command(q, q, t, False, t)
            monitor.update(t)
        monitor.on_camera(t, t, image)
        monitor.on_chunk_samples(t, np.arange(16) * 0.1, np.zeros((4, 16, 3)), t)
        return monitor.update(t)

    for img in nominal[150:160]:
        tick(img)
    assert monitor.reset(t)[0] and monitor.mode == Mode.NOMINAL  # leave the start-up HOLD
    for img in nominal[160:170]:
        assert tick(img) == Mode.NOMINAL
    modes = [tick(img) for img in relit[:4]]
    assert modes[:2] == [Mode.NOMINAL, Mode.NOMINAL] and modes[2] == Mode.HOLD
    assert 'unlike the training' in monitor.status(t).reason
    ok, why = monitor.reset(t)
    assert not ok and 'unlike the training' in why
    tick(nominal[150])
    assert monitor.reset(t)[0] and monitor.mode == Mode.NOMINAL
