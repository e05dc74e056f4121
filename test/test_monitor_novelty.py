"""Camera-content checks: novelty of frames to the policy encoder, frozen frames."""

import dataclasses

import numpy as np
import pytest

from genpolicy_ros.monitor.calibration import calibrate
from genpolicy_ros.monitor.gate import Mode
from genpolicy_ros.monitor.monitor import MonitorConfig, RuntimeMonitor
from genpolicy_ros.monitor.novelty import (CameraContentChecks, FEATURE_DEFINITION,
                                           FeatureNoveltyModel, hue_histogram, run_statistic)
from genpolicy_ros.monitor.watchdogs import FaultKind
from genpolicy_ros.robot import FrankaModel
from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.world import PandaWorld

CHECKPOINT = 'push_flow_v1.pt'


@pytest.fixture(scope='module')
def frames():
    """Return frames + joints of 170 task seeds, and of 20 under other light/colour/camera."""
    world = PandaWorld(SimConfig.load())
    cam = world.config.camera

    def scene(seed):  # the arm starts above a seed-dependent point
        world.reset(seed)
        return world.render(), world.joint_state()[0]

    try:
        nominal = [scene(seed) for seed in range(170)]
        world.set_light(direction=(-0.6, -0.5, 0.6), color_rgb=(1.0, 0.7, 0.45), ambient=0.3,
                        diffuse=0.8, specular=0.2)
        relit = [scene(seed) for seed in range(150, 170)]
        world.set_light(direction=cam.light_direction, color_rgb=cam.light_color_rgb,
                        ambient=cam.light_ambient, diffuse=cam.light_diffuse,
                        specular=cam.light_specular, shadows=cam.shadows)
        world.set_cube_color((0.15, 0.35, 0.9, 1.0))
        blue = [scene(seed) for seed in range(150, 170)]
        world.set_cube_color(world.config.cube.rgba)
        world.set_camera_pose(np.add(cam.eye_m, (-0.05, 0.12, 0.08)),
                              np.add(cam.target_m, (0.0, 0.04, 0.0)), cam.up)
        shifted = [scene(seed) for seed in range(150, 170)]
    finally:
        world.close()
    return {name: (np.stack([f for f, _ in s]), np.stack([q for _, q in s]))
            for name, s in (('nominal', nominal), ('relit', relit), ('blue', blue),
                            ('shifted', shifted))}


@pytest.fixture(scope='module')
def model(frames):
    images, q = frames['nominal']
    return FeatureNoveltyModel.fit(CHECKPOINT, images[:150], q[:150], shrinkage=0.05)


def test_run_statistic_is_the_level_k_frames_in_a_row_exceed():
    assert run_statistic([1, 5, 5, 5, 1], 3) == 5
    assert run_statistic([5, 1, 5, 5], 3) == 1
    assert run_statistic([2, 3, 4], 1) == 4
    assert run_statistic([9, 9], 3) == float('-inf')


@pytest.mark.parametrize('scene, component', [('relit', 0), ('blue', 1), ('shifted', 2)])
def test_novel_scenes_are_far_from_the_training_frames(model, frames, scene, component):
    images, q = frames['nominal']
    held_out = model.raw_components(images[150:], q[150:]) / model.scales  # never fitted
    assert np.all(np.isfinite(held_out)) and held_out.max() < 2.0
    novel = model.raw_components(*frames[scene]) / model.scales
    # The component made for this change sees it: typical frames score several times higher
    # (150 fit frames make a rough model; the shipped one is fitted on ~30000).
    assert np.median(novel[:, component]) > 3.0 * np.median(held_out[:, component])
    assert np.median(model.distances(*frames[scene])) > 2.0 * np.median(held_out.max(axis=1))


def test_hue_histogram_puts_a_blue_patch_in_a_blue_bin():
    img = np.full((1, 20, 20, 3), 128, dtype=np.uint8)  # grey: no hue at all
    assert np.all(hue_histogram(img) == 0.0)
    img[0, :5, :5] = (30, 60, 230)
    hist = hue_histogram(img)[0]
    blue = int((np.arctan2(np.sqrt(3) * (60 - 230), 2 * 30 - 60 - 230) + np.pi)
               / (2 * np.pi) * 16)
    assert np.argmax(hist) == blue and hist.sum() == pytest.approx(hist[blue])


def test_model_round_trips_and_refuses_other_definitions(model, frames, tmp_path):
    path = model.save(tmp_path / 'novelty.npz')
    loaded = FeatureNoveltyModel.load(path)
    assert loaded.checkpoint == CHECKPOINT and loaded.n_fit == 150
    images, q = frames['relit']
    np.testing.assert_allclose(loaded.distances(images[:3], q[:3]),
                               model.distances(images[:3], q[:3]), rtol=1e-4)
    with np.load(path) as data:
        arrays = dict(data)
    arrays['definition'] = np.array('novelty-v0: something else')
    np.savez(tmp_path / 'old.npz', **arrays)
    with pytest.raises(ValueError, match='recalibrate'):
        FeatureNoveltyModel.load(tmp_path / 'old.npz')
    with pytest.raises(FileNotFoundError, match='genpolicy-calibrate'):
        FeatureNoveltyModel.load(tmp_path / 'none.npz')
    with pytest.raises(ValueError, match='too few'):
        FeatureNoveltyModel.fit(CHECKPOINT, *(a[:20] for a in frames['nominal']))


def test_frozen_frame_is_a_fault_only_while_the_arm_moves(frames):
    checks = CameraContentChecks(MonitorConfig.load().novelty, None, None)
    images = frames['nominal'][0]
    img = images[0]
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
    checks.on_frame(images[1])  # a live picture clears it
    assert checks.active_faults() == []


def test_monitor_holds_on_novel_frames_and_refuses_reset_while_they_last(model, frames):
    nominal, relit = frames['nominal'], frames['relit']
    config = MonitorConfig.load()
    config = dataclasses.replace(config, novelty=dataclasses.replace(
        config.novelty, hold_consecutive_frames=3))
    cal = calibrate([[0.1]] * 19, 0.1, CHECKPOINT, config.consistency.definition(),
                    [1.5] * 19, FEATURE_DEFINITION, 'novelty.npz')
    limits = FrankaModel().limits
    monitor = RuntimeMonitor(config, limits.velocity, limits.acceleration, cal, model)
    t = 0.0

    def tick(scene, i):
        nonlocal t
        image, q = scene[0][i], scene[1][i]
        for _ in range(7):  # 15 Hz camera, 100 Hz joint states and commands
            t += 0.01
            monitor.on_joint_state(q, 0.0 * q, t, t)
            monitor.on_safe_command(q, 0.0 * q, t, False, t)
            monitor.update(t)
        monitor.on_camera(t, t, image)
        monitor.on_chunk_samples(t, np.arange(16) * 0.1, np.zeros((4, 16, 3)), t)
        return monitor.update(t)

    # One scene (seed 150), the arm still: first as in training, then under another light.
    for _ in range(10):
        tick(nominal, 150)
    assert monitor.reset(t)[0] and monitor.mode == Mode.NOMINAL  # leave the start-up HOLD
    for _ in range(10):
        assert tick(nominal, 150) == Mode.NOMINAL
    modes = [tick(relit, 0) for _ in range(4)]
    assert modes[:2] == [Mode.NOMINAL, Mode.NOMINAL] and modes[2] == Mode.HOLD
    assert 'unlike the training' in monitor.status(t).reason
    ok, why = monitor.reset(t)
    assert not ok and 'unlike the training' in why
    for _ in range(config.novelty.arm_window_frames):  # the arm reading's average recovers
        tick(nominal, 150)
    ok, why = monitor.reset(t)
    assert ok and monitor.mode == Mode.NOMINAL, why


def test_frames_are_paired_with_the_joints_measured_when_they_were_taken():
    checks = CameraContentChecks(MonitorConfig.load().novelty, None, None)
    assert checks.joints_at(1.0) is None
    for k in range(100):  # 250 Hz joint states; the frame of t = 0.1 s arrives at t = 0.4 s
        checks.on_joint_positions(np.full(7, k * 0.004), stamp=k * 0.004)
    np.testing.assert_allclose(checks.joints_at(0.1), np.full(7, 0.1))
    np.testing.assert_allclose(checks.joints_at(None), np.full(7, 99 * 0.004))  # newest
