"""The safety filter closed around the simulated arm (PyBullet physics, not a kinematic model).

An adversarial reference drives the EE into the table and then into an obstacle at 10x the
speed cap for 20 s of simulated time. Penetration is measured by PyBullet's own collision
geometry (the bundled Panda meshes), which the filter never sees: it only knows its spheres.
"""

import numpy as np
import pybullet as pb
import pytest

from genpolicy_ros.drivers.pybullet_backend import PyBulletBackend
from genpolicy_ros.robot import FrankaModel
from genpolicy_ros.safety.config import SafetyConfig
from genpolicy_ros.safety.filter import FilterStatus, RobotState, SafetyFilter
from genpolicy_ros.sim.world import PandaWorld

OBSTACLE_CENTER = np.array([0.55, 0.15, 0.12])
OBSTACLE_RADIUS = 0.06


def _min_distance(world: PandaWorld, body: int) -> float:
    """Closest distance [m] (negative: penetration) from the moving links to ``body``.

    The base (link index -1) and link 1 (index 0) are bolted to the table top and never move.
    """
    points = pb.getClosestPoints(world.robot_id, body, 0.05, physicsClientId=world.client)
    return min((p[8] for p in points if p[3] >= 1), default=0.05)


@pytest.fixture(scope='module')
def run():
    world = PandaWorld(gui=False)
    world.reset(100000)
    # Move the cube out of the way: this test is about the arm, the table and the obstacle.
    pb.resetBasePositionAndOrientation(world.cube_id, [0.0, -0.6, 0.025], [0, 0, 0, 1],
                                       physicsClientId=world.client)
    obstacle = pb.createMultiBody(
        baseMass=0.0, baseCollisionShapeIndex=pb.createCollisionShape(
            pb.GEOM_SPHERE, radius=OBSTACLE_RADIUS, physicsClientId=world.client),
        basePosition=OBSTACLE_CENTER.tolist(), physicsClientId=world.client)
    for link in range(-1, pb.getNumJoints(world.robot_id, physicsClientId=world.client)):
        # Measure, do not push: the arm must be kept out by the filter, not by contact forces.
        pb.setCollisionFilterPair(world.robot_id, obstacle, link, -1, 0,
                                  physicsClientId=world.client)
    backend = PyBulletBackend(world)
    model = FrankaModel()
    config = SafetyConfig.load()
    filt = SafetyFilter(model, config)
    filt.set_obstacles(OBSTACLE_CENTER[None], np.array([OBSTACLE_RADIUS]))
    cap = config.speed_cap.max_speed_mps
    log = dict(table=[], obstacle=[], q=[], speed=[], status=[])
    for k in range(int(20.0 * config.control_rate_hz)):
        arm = backend.read_state()
        ee = model.ee_pose(arm.q)[0]
        if k < 1000:   # 10 s straight down into the table, drifting sideways
            direction = np.array([0.3, 0.2, -1.0])
        else:          # 10 s straight at the obstacle's centre
            direction = OBSTACLE_CENTER - ee
        twist = np.concatenate([10.0 * cap * direction / np.linalg.norm(direction), np.zeros(3)])
        res = filt.step(RobotState(arm.q, arm.dq, arm.stamp), twist)
        backend.command(res.q_cmd, res.dq_cmd)
        backend.advance(config.dt)
        log['table'].append(_min_distance(world, world.table_id))
        log['obstacle'].append(_min_distance(world, obstacle))
        log['q'].append(backend.read_state().q)
        log['speed'].append(np.linalg.norm(res.safe_twist[:3]))
        log['status'].append(res.status)
    world.close()
    return {k: (np.array(v) if k != 'status' else v) for k, v in log.items()}, model


def test_no_table_penetration(run):
    log, _ = run
    print(f'closest approach to the table: {log["table"].min() * 1e3:.2f} mm')
    assert log['table'].min() >= -0.001, f'penetrated the table by {-log["table"].min():.4f} m'
    assert log['table'][900:1000].max() < 0.05, 'the arm never got near the table'


def test_no_obstacle_penetration(run):
    log, _ = run
    print(f'closest approach to the obstacle: {log["obstacle"].min() * 1e3:.2f} mm')
    assert log['obstacle'].min() >= -0.001, f'penetrated by {-log["obstacle"].min():.4f} m'
    assert log['obstacle'][1900:].max() < 0.05, 'the arm never got near the obstacle'


def test_joint_limits_never_crossed_and_speed_capped(run):
    log, model = run
    q = log['q']
    assert np.all(q >= model.limits.lower) and np.all(q <= model.limits.upper)
    assert log['speed'].max() <= 0.25 + 1e-9
    assert FilterStatus.INTERVENED in log['status']
