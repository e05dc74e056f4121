"""PandaWorld: determinism, physics rate, camera model, appearance hooks, motor modes."""

import numpy as np
import pybullet as pb
import pytest
from scipy.spatial.transform import Rotation

from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.world import PandaWorld


@pytest.fixture(scope='module')
def config():
    """Provide the config fixture."""
    return SimConfig.load()


@pytest.fixture
def world(config):
    """Provide the world fixture."""
    w = PandaWorld(config)
    yield w
    w.close()


def test_same_seed_same_state_and_image_bytes(config):
    """Check: same seed same state and image bytes."""
    a, b = PandaWorld(config), PandaWorld(config)
    try:
        spec_a, spec_b = a.reset(7), b.reset(7)
        np.testing.assert_array_equal(spec_a.cube_xy, spec_b.cube_xy)
        np.testing.assert_array_equal(spec_a.goal_xy, spec_b.goal_xy)
        np.testing.assert_array_equal(a.cube_pose(), b.cube_pose())
        np.testing.assert_array_equal(a.joint_state()[0], b.joint_state()[0])
        image = a.render()
        assert image.shape == (config.camera.height_px, config.camera.width_px, 3)
        assert image.dtype == np.uint8
        assert image.tobytes() == b.render().tobytes()
        # Reset of a used world gives the same state again (scene rebuilt from scratch).
        a.step(300)
        a.reset(7)
        assert a.render().tobytes() == image.tobytes()
        a.step(50)
        b.step(50)
        np.testing.assert_array_equal(a.cube_pose(), b.cube_pose())
        spec_c = a.reset(8)
        assert not np.allclose(spec_c.cube_xy, spec_a.cube_xy)
        assert a.render().tobytes() != image.tobytes()
    finally:
        a.close()
        b.close()


def test_physics_rate(config):
    """Check: physics rate."""
    w = PandaWorld(config)
    try:
        assert w.dt == pytest.approx(1.0 / config.physics_hz)
        params = pb.getPhysicsEngineParameters(physicsClientId=w.client)
        assert params['fixedTimeStep'] == pytest.approx(1.0 / config.physics_hz)
        w.reset(0)
        w.step(250)
        assert w.sim_time == pytest.approx(250 / config.physics_hz)
    finally:
        w.close()
    w = PandaWorld(config, physics_hz=240.0)
    try:
        params = pb.getPhysicsEngineParameters(physicsClientId=w.client)
        assert params['fixedTimeStep'] == pytest.approx(1.0 / 240.0)
    finally:
        w.close()


def test_start_pose_cube_and_goal(world, config):
    """Check: start pose cube and goal."""
    spec = world.reset(3)
    pos, quat = world.ee_pose()
    np.testing.assert_allclose(pos[:2], spec.ee_start_xy, atol=1e-3)
    assert pos[2] == pytest.approx(config.task.tcp_push_z_m, abs=1e-3)
    assert world.fingertip_min_z() == pytest.approx(config.task.push_height_m, abs=2e-3)
    # TCP points down: its z axis is the world -z.
    z_axis = Rotation.from_quat(quat).as_matrix()[:, 2]
    np.testing.assert_allclose(z_axis, [0.0, 0.0, -1.0], atol=1e-2)
    world.step(500)
    cube = world.cube_pose()
    np.testing.assert_allclose(cube[:2], spec.cube_xy, atol=1e-3)
    assert cube[2] == pytest.approx(config.cube.size_m / 2.0, abs=1e-3)
    # The goal disc is visual only.
    assert len(pb.getCollisionShapeData(world.goal_id, -1, physicsClientId=world.client)) == 0
    np.testing.assert_allclose(world.goal_xy, spec.goal_xy)


def test_camera_intrinsics_project_the_cube(world, config):
    """Check: camera intrinsics project the cube."""
    world.reset(5)
    info = world.camera_info()
    assert info.k.shape == (3, 3) and info.p.shape == (3, 4) and info.d.shape == (5,)
    assert info.frame_id == config.camera.frame_id
    expected_f = config.camera.height_px / 2.0 / np.tan(np.radians(config.camera.fov_deg) / 2)
    assert info.k[1, 1] == pytest.approx(expected_f)
    pos, quat = world.camera_pose()
    centre = world.cube_pose()[:3]
    p_cam = Rotation.from_quat(quat).as_matrix().T @ (centre - pos)
    uv = info.k @ p_cam
    uv = uv[:2] / uv[2]
    image = world.render().astype(int)
    red = (image[:, :, 0] > 120) & (image[:, :, 1] < 80) & (image[:, :, 2] < 80)
    rows, cols = np.nonzero(red)
    assert len(rows) > 4
    assert np.mean(cols) == pytest.approx(uv[0], abs=2.0)
    assert np.mean(rows) == pytest.approx(uv[1], abs=2.0)


def test_appearance_hooks_change_the_image(world):
    """Check: appearance hooks change the image."""
    world.reset(1)
    base = world.render()
    world.set_cube_color([0.1, 0.1, 0.9, 1.0])
    blue = world.render()
    assert not np.array_equal(base, blue)
    world.set_light(direction=[-1.0, 0.0, 0.3], ambient=0.2)
    assert not np.array_equal(blue, world.render())
    size_before = world.cube_size
    world.set_cube_size(0.07)
    aabb = pb.getAABB(world.cube_id, -1, physicsClientId=world.client)
    assert aabb[1][2] - aabb[0][2] == pytest.approx(0.07, abs=0.01)
    assert world.cube_size == 0.07 != size_before
    world.set_camera_pose([0.9, 0.4, 0.8], [0.5, 0.0, 0.0])
    moved = world.render()
    world.reset(1)  # appearance survives resets
    assert world.cube_size == 0.07
    assert np.array_equal(moved, world.render())


def test_position_mode_respects_velocity_limit(world, config):
    """Check: position mode respects velocity limit."""
    world.reset(0)
    q0 = world.joint_state()[0]
    target = q0.copy()
    target[0] += 1.0
    world.set_joint_targets(target, np.zeros(7))
    peak = 0.0
    for _ in range(100):
        world.step(5)
        peak = max(peak, abs(world.joint_state()[1][0]))
    assert peak <= config.arm.velocity_limits_radps[0] * 1.02
    assert peak > 0.5  # it did move


def test_velocity_mode_and_gripper(world, config):
    """Check: velocity mode and gripper."""
    world.reset(0)
    world.set_joint_velocities(np.array([0.3, 0, 0, 0, 0, 0, 0.0]))
    world.step(200)
    dq = world.joint_state()[1]
    assert dq[0] == pytest.approx(0.3, abs=0.02)
    world.set_joint_velocities(np.array([0, 0, 0, 0, 0, 0, 50.0]))
    world.step(300)
    assert abs(world.joint_state()[1][6]) <= config.arm.velocity_limits_radps[6] * 1.02
    world.set_joint_velocities(np.zeros(7))
    world.open_gripper()
    world.step(500)
    assert world.gripper_width() == pytest.approx(config.arm.finger_max_width_m, abs=0.005)
    world.close_gripper()
    world.step(500)
    assert world.gripper_width() == pytest.approx(0.0, abs=0.005)


def test_render_scale_renders_fewer_pixels_and_enlarges_them(config):
    """Check: a 640x480 camera rendered at 0.2 is 128x96 pixels, each repeated 5x5.

    Its centre square shrunk to the policy input is the native 96x96 render of the same state.
    """
    import dataclasses

    from genpolicy_ros.nodes.conversions import fit_image

    big = dataclasses.replace(config, camera=dataclasses.replace(
        config.camera, width_px=640, height_px=480, render_scale=0.2))
    small_world, big_world = PandaWorld(config), PandaWorld(big)
    try:
        small_world.reset(3)
        big_world.reset(3)
        image = big_world.render()
        assert image.shape == (480, 640, 3)
        blocks = image.reshape(96, 5, 128, 5, 3)
        assert np.all(blocks == blocks[:, :1, :, :1])   # every 5x5 block is one pixel
        np.testing.assert_array_equal(fit_image(image, 96), small_world.render())
        with pytest.raises(ValueError, match='render_scale'):
            PandaWorld(dataclasses.replace(big, camera=dataclasses.replace(
                big.camera, render_scale=0.0)))
    finally:
        small_world.close()
        big_world.close()
