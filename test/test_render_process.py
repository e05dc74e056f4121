"""CameraProcess: out-of-process images equal PandaWorld.render(); a dead renderer is reported.

FrameRenderer (what the sim node uses) delivers frames from its thread and restarts a dead
render process for a later snapshot.

Real child processes and real PyBullet worlds; the image comparisons are byte-exact.
"""

import os
import pickle
import signal
import threading

import numpy as np
import pybullet as pb
import pytest

from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.render_process import CameraProcess, FrameRenderer
from genpolicy_ros.sim.world import PandaWorld


@pytest.fixture(scope='module')
def config():
    """Provide the sim config."""
    return SimConfig.load()


@pytest.fixture(scope='module')
def camera(config):
    """One render process shared by the tests: each starts from the previous test's scene."""
    with CameraProcess(config) as cam:
        yield cam


@pytest.fixture
def world(config):
    """Provide a freshly reset world."""
    w = PandaWorld(config)
    w.reset(3)
    yield w
    w.close()


def _move_arm(w):
    w.set_joint_targets(w.home_q + np.array([0.4, 0.2, -0.3, 0.3, 0.5, -0.4, 0.6]), np.zeros(7))
    w.step(300)


def _move_cube(w):
    pb.resetBasePositionAndOrientation(w.cube_id, [0.45, -0.1, w.cube_size / 2.0],
                                       pb.getQuaternionFromEuler([0.0, 0.0, 0.7]),
                                       physicsClientId=w.client)


def _open_fingers(w):
    w.open_gripper()
    w.step(300)


CHANGES = {
    'reset_only': lambda w: None,
    'arm_moved_by_physics': _move_arm,
    'fingers_open': _open_fingers,
    'other_episode': lambda w: w.reset(11),
    'cube_moved': _move_cube,
    'cube_recoloured': lambda w: w.set_cube_color([0.1, 0.2, 0.9, 1.0]),
    'cube_resized': lambda w: w.set_cube_size(0.08),
    'goal_moved': lambda w: w.set_goal([0.62, 0.12]),
    'camera_shifted': lambda w: w.set_camera_pose([0.9, 0.35, 0.85], [0.5, 0.05, 0.0],
                                                  [0.0, 0.1, 1.0]),
    'light_changed': lambda w: w.set_light(direction=[-1.0, 0.3, 0.6], color_rgb=[1.0, 0.8, 0.6],
                                           ambient=0.3, diffuse=0.6, specular=0.2),
    'shadows_on': lambda w: w.set_light(shadows=True),
}


@pytest.mark.parametrize('change', list(CHANGES))
def test_out_of_process_image_is_byte_identical(camera, world, change):
    before = world.render()
    CHANGES[change](world)
    expected = world.render()
    if change != 'reset_only':
        assert expected.tobytes() != before.tobytes(), f'{change} does not change the image'
    image = camera.render(world.render_snapshot())
    assert image.dtype == np.uint8 and image.shape == expected.shape
    assert image.tobytes() == expected.tobytes()


def test_all_changes_at_once_and_back(camera, world):
    base = world.render_snapshot()
    for change in CHANGES.values():
        change(world)
    assert camera.render(world.render_snapshot()).tobytes() == world.render().tobytes()
    # Back to a default-looking scene: the render world must undo size, colour, light, camera.
    fresh = PandaWorld(world.config)
    try:
        fresh.reset(3)
        assert fresh.render_snapshot() == base
        assert camera.render(base).tobytes() == fresh.render().tobytes()
    finally:
        fresh.close()


def test_snapshot_is_small_and_does_not_touch_the_world(world):
    q_before = world.joint_state()[0]
    snapshot = world.render_snapshot()
    assert len(pickle.dumps(snapshot)) < 2000
    assert len(snapshot.arm_q) == 7 and len(snapshot.finger_q) == 2
    assert pickle.loads(pickle.dumps(snapshot)) == snapshot
    np.testing.assert_array_equal(world.joint_state()[0], q_before)


def test_bad_snapshot_is_an_error_but_the_process_survives(camera, world):
    with pytest.raises(RuntimeError, match='could not render'):
        camera.render('not a snapshot')
    assert camera.alive
    assert camera.render(world.render_snapshot()).tobytes() == world.render().tobytes()


def test_killed_process_gives_a_clear_error_until_restarted(config, world):
    with CameraProcess(config) as cam:
        snapshot = world.render_snapshot()
        assert cam.render(snapshot).tobytes() == world.render().tobytes()
        pid = cam.pid
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r'camera render process died \(exit code -9'):
            cam.render(snapshot)
        assert not cam.alive and cam.pid is None and cam.failed
        with pytest.raises(RuntimeError, match='restart'):  # stays failed, says what to do
            cam.render(snapshot)
        cam.restart()
        assert cam.pid != pid and not cam.failed
        assert cam.render(snapshot).tobytes() == world.render().tobytes()


def test_nice_and_close_stop_the_process(config, world):
    cam = CameraProcess(config, nice=3)
    cam.render(world.render_snapshot())
    assert os.getpriority(os.PRIO_PROCESS, cam.pid) == min(os.getpriority(os.PRIO_PROCESS, 0) + 3,
                                                           19)
    proc = cam._proc
    cam.close()
    assert not proc.is_alive() and proc.exitcode == 0
    cam.close()  # idempotent
    with pytest.raises(RuntimeError, match='closed'):
        cam.render(world.render_snapshot())


def test_frame_renderer_delivers_frames_and_restarts_a_dead_process(config, world):
    frames, errors = [], []
    got = threading.Event()

    def on_frame(image, tag):
        frames.append((image, tag))
        got.set()

    def on_error(exc):
        errors.append(exc)
        got.set()

    renderer = FrameRenderer(config, on_frame, on_error, restart_period_s=0.0)
    try:
        renderer.submit(world.render_snapshot(), 'first')
        assert got.wait(60.0) and not errors
        assert frames[-1][1] == 'first'
        assert frames[-1][0].tobytes() == world.render().tobytes()
        pid = renderer.camera.pid
        os.kill(pid, signal.SIGKILL)
        got.clear()
        _move_arm(world)
        renderer.submit(world.render_snapshot(), 'lost')
        assert got.wait(10.0) and len(errors) == 1 and 'died' in str(errors[0])
        got.clear()
        renderer.submit(world.render_snapshot(), 'after restart')
        assert got.wait(60.0), 'no frame after the restart'
        assert frames[-1][1] == 'after restart' and renderer.camera.pid != pid
        assert frames[-1][0].tobytes() == world.render().tobytes()
    finally:
        renderer.close()
    assert not renderer.camera.alive
