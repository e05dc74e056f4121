"""Tests of the Panda model: FK against PyBullet's panda, Jacobians, limits, spheres, input checks.

PyBullet's bundled ``franka_panda/panda.urdf`` is an independent description of the same robot
(franka_ros xacro output), so agreement with it checks our URDF written from the DH table.
"""

from pathlib import Path

import numpy as np
import pinocchio as pin
import pybullet as pb
import pybullet_data
import pytest
import yaml

from genpolicy_ros.paths import urdf_path
from genpolicy_ros.robot import FrankaModel, Kinematics, PandaModelConfig

N_CONFIGS = 200
POS_TOL_M = 1e-3
ROT_TOL_RAD = 1e-3
# URDF frames of our model -> links of PyBullet's panda (same names there).
COMPARED_FRAMES = [f'panda_link{i}' for i in range(1, 9)] + ['panda_hand']
TCP_OFFSET_M = 0.1034  # Franka spec: TCP 0.1034 m along the hand z axis
ARM_LINKS = [f'panda_link{i}' for i in range(1, 8)]


@pytest.fixture(scope='module')
def model() -> FrankaModel:
    """Model built from the package URDF and YAML."""
    return FrankaModel()


@pytest.fixture(scope='module')
def bullet():
    """Yield a PyBullet DIRECT client with the bundled panda: (client, body, links, joints)."""
    client = pb.connect(pb.DIRECT)
    path = str(Path(pybullet_data.getDataPath()) / 'franka_panda' / 'panda.urdf')
    body = pb.loadURDF(path, basePosition=[0, 0, 0], useFixedBase=True, physicsClientId=client)
    links, joints = {}, {}
    for index in range(pb.getNumJoints(body, physicsClientId=client)):
        info = pb.getJointInfo(body, index, physicsClientId=client)
        joints[info[1].decode()] = index
        links[info[12].decode()] = index
    yield client, body, links, joints
    pb.disconnect(client)


def _set_bullet(bullet, q: np.ndarray, finger_m: float = 0.0) -> None:
    client, body, _, joints = bullet
    for i, value in enumerate(q):
        pb.resetJointState(body, joints[f'panda_joint{i + 1}'], float(value),
                           physicsClientId=client)
    for name in ('panda_finger_joint1', 'panda_finger_joint2'):
        pb.resetJointState(body, joints[name], finger_m, physicsClientId=client)


def _bullet_link_frame(bullet, link: str) -> tuple[np.ndarray, np.ndarray]:
    """World pose of a PyBullet link's URDF frame (not its inertial frame)."""
    client, body, links, _ = bullet
    state = pb.getLinkState(body, links[link], computeForwardKinematics=1,
                            physicsClientId=client)
    rot = np.array(pb.getMatrixFromQuaternion(state[5])).reshape(3, 3)
    return np.array(state[4]), rot


def _rot_error(r_a: np.ndarray, r_b: np.ndarray) -> float:
    return float(np.linalg.norm(pin.log3(r_a.T @ r_b)))


def _configs(model: FrankaModel, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([model.random_configuration(rng) for _ in range(n)])


# ------------------------------------------------------------------------------ forward kinematics
def test_fk_matches_pybullet_on_every_link_frame(model, bullet):
    """Link frames link1..link8 and hand agree with PyBullet on random configurations."""
    pos_err, rot_err = 0.0, 0.0
    for q in _configs(model, N_CONFIGS, seed=1):
        _set_bullet(bullet, q)
        for frame in COMPARED_FRAMES:
            pos, rot = model.frame_pose(q, frame)
            ref_pos, ref_rot = _bullet_link_frame(bullet, frame)
            pos_err = max(pos_err, float(np.linalg.norm(pos - ref_pos)))
            rot_err = max(rot_err, _rot_error(rot, ref_rot))
    assert pos_err < POS_TOL_M, f'max FK position error {pos_err:.2e} m'
    assert rot_err < ROT_TOL_RAD, f'max FK rotation error {rot_err:.2e} rad'


def test_own_urdf_loads_in_pybullet_with_the_same_kinematics(model):
    """Our URDF is usable by the simulator: PyBullet parses it and agrees with Pinocchio."""
    client = pb.connect(pb.DIRECT)
    try:
        body = pb.loadURDF(str(urdf_path('panda.urdf')), useFixedBase=True,
                           physicsClientId=client)
        links, joints = {}, {}
        for index in range(pb.getNumJoints(body, physicsClientId=client)):
            info = pb.getJointInfo(body, index, physicsClientId=client)
            joints[info[1].decode()] = index
            links[info[12].decode()] = index
            if info[2] == pb.JOINT_REVOLUTE:
                # limits as parsed by PyBullet equal the model's (one source: the URDF)
                arm = model.joint_names.index(info[1].decode())
                assert info[8] == pytest.approx(model.limits.lower[arm])
                assert info[9] == pytest.approx(model.limits.upper[arm])
                assert info[11] == pytest.approx(model.limits.velocity[arm])
        assert {'panda_tcp', 'panda_leftfinger', 'panda_rightfinger'} <= set(links)
        own = (client, body, links, joints)
        for q in _configs(model, 50, seed=10):
            _set_bullet(own, q)
            for frame in COMPARED_FRAMES + ['panda_tcp']:
                pos, rot = model.frame_pose(q, frame)
                ref_pos, ref_rot = _bullet_link_frame(own, frame)
                assert np.linalg.norm(pos - ref_pos) < 1e-5
                assert _rot_error(rot, ref_rot) < 1e-5
    finally:
        pb.disconnect(client)


def test_tcp_is_on_hand_axis_like_pybullet_grasptarget(model, bullet):
    """Check TCP = PyBullet hand + 0.1034 m hand z.

    PyBullet's ``panda_grasptarget`` sits on the same axis but at 0.105 m, 1.6 mm off Franka's
    spec value, so it is checked to be on the axis with that known offset.
    """
    client, body, links, _ = bullet
    assert 'panda_grasptarget' in links
    for q in _configs(model, N_CONFIGS, seed=2):
        _set_bullet(bullet, q)
        hand_pos, hand_rot = _bullet_link_frame(bullet, 'panda_hand')
        tcp_pos, tcp_rot = model.ee_pose(q)
        np.testing.assert_allclose(tcp_pos, hand_pos + TCP_OFFSET_M * hand_rot[:, 2],
                                   atol=POS_TOL_M)
        assert _rot_error(tcp_rot, hand_rot) < ROT_TOL_RAD
        grasp_pos, grasp_rot = _bullet_link_frame(bullet, 'panda_grasptarget')
        along = (grasp_pos - tcp_pos) @ tcp_rot[:, 2]
        assert np.linalg.norm(grasp_pos - tcp_pos - along * tcp_rot[:, 2]) < POS_TOL_M
        assert along == pytest.approx(0.105 - TCP_OFFSET_M, abs=1e-4)
        assert _rot_error(tcp_rot, grasp_rot) < ROT_TOL_RAD


def test_home_pose_is_the_well_known_one(model):
    """The TCP pose at q_home is the one Franka tools report."""
    # Panda at q_home: TCP about 0.307 m in front of the base at 0.487 m height, pointing down.
    pos, rot = model.ee_pose(model.q_home)
    np.testing.assert_allclose(pos, [0.3069, 0.0, 0.4869], atol=1e-3)
    np.testing.assert_allclose(rot[:, 2], [0.0, 0.0, -1.0], atol=1e-3)


def test_kinematics_agrees_with_single_queries(model):
    """The one-pass kinematics() equals the single-purpose queries."""
    for q in _configs(model, 20, seed=3):
        kin = model.kinematics(q)
        assert isinstance(kin, Kinematics)
        pos, rot = model.ee_pose(q)
        np.testing.assert_allclose(kin.ee_pos, pos, atol=1e-12)
        np.testing.assert_allclose(kin.ee_rot, rot, atol=1e-12)
        np.testing.assert_allclose(kin.ee_jac, model.ee_jacobian(q), atol=1e-12)
        np.testing.assert_allclose(kin.sphere_centers, model.sphere_centers(q), atol=1e-12)
        np.testing.assert_allclose(kin.sphere_jacs, model.sphere_jacobians(q), atol=1e-12)
        n_spheres = len(model.sphere_radii)
        assert kin.sphere_centers.shape == (n_spheres, 3)
        assert kin.sphere_jacs.shape == (n_spheres, 3, 7)
        assert kin.ee_jac.shape == (6, 7)


def test_kinematics_results_are_not_overwritten_by_later_calls(model):
    """Returned arrays are owned by the caller."""
    q_a, q_b = _configs(model, 2, seed=4)
    kin_a = model.kinematics(q_a)
    saved = (kin_a.ee_pos.copy(), kin_a.ee_jac.copy(), kin_a.sphere_centers.copy(),
             kin_a.sphere_jacs.copy())
    model.kinematics(q_b)
    for before, after in zip(saved, (kin_a.ee_pos, kin_a.ee_jac, kin_a.sphere_centers,
                                     kin_a.sphere_jacs)):
        np.testing.assert_array_equal(before, after)


# ------------------------------------------------------------------------------ Jacobians
def test_ee_jacobian_matches_finite_differences(model):
    """The TCP Jacobian (linear and angular, world axes) matches central differences."""
    eps = 1e-6
    for q in _configs(model, 20, seed=5):
        jac = model.kinematics(q).ee_jac
        numeric = np.zeros((6, 7))
        for k in range(7):
            dq = np.zeros(7)
            dq[k] = eps
            pos_p, rot_p = model.ee_pose(q + dq)
            pos_m, rot_m = model.ee_pose(q - dq)
            numeric[:3, k] = (pos_p - pos_m) / (2 * eps)
            # world-frame angular velocity: log of the world-side rotation increment
            numeric[3:, k] = pin.log3(rot_p @ rot_m.T) / (2 * eps)
        np.testing.assert_allclose(jac, numeric, atol=1e-5)


def test_sphere_jacobians_match_finite_differences(model):
    """Sphere centre Jacobians match central differences."""
    eps = 1e-6
    for q in _configs(model, 20, seed=6):
        jacs = model.kinematics(q).sphere_jacs
        numeric = np.zeros_like(jacs)
        for k in range(7):
            dq = np.zeros(7)
            dq[k] = eps
            numeric[:, :, k] = (model.sphere_centers(q + dq)
                                - model.sphere_centers(q - dq)) / (2 * eps)
        np.testing.assert_allclose(jacs, numeric, atol=1e-5)


# ------------------------------------------------------------------------------ limits and data
def test_limits_match_franka_spec(model):
    """Limits equal the numbers of Franka's Panda datasheet."""
    lim = model.limits
    np.testing.assert_allclose(lim.lower, [-2.8973, -1.7628, -2.8973, -3.0718, -2.8973,
                                           -0.0175, -2.8973])
    np.testing.assert_allclose(lim.upper, [2.8973, 1.7628, 2.8973, -0.0698, 2.8973,
                                           3.7525, 2.8973])
    np.testing.assert_allclose(lim.velocity, [2.175] * 4 + [2.61] * 3)
    np.testing.assert_allclose(lim.effort, [87.0] * 4 + [12.0] * 3)
    np.testing.assert_allclose(lim.acceleration, [15, 7.5, 10, 12.5, 15, 20, 20])
    np.testing.assert_allclose(lim.jerk, [7500, 3750, 5000, 6250, 7500, 10000, 10000])
    np.testing.assert_allclose(model.q_home, [0, -0.785, 0, -2.356, 0, 1.571, 0.785])
    assert np.all((model.q_home > lim.lower) & (model.q_home < lim.upper))


def test_model_shape_and_names(model):
    """Joint names, sizes and sphere sets are as documented."""
    assert model.nq == 7
    assert model.joint_names == [f'panda_joint{i}' for i in range(1, 8)]
    assert model.ee_frame == 'panda_tcp'
    assert 15 <= len(model.sphere_radii) <= 25
    assert len(model.sphere_links) == len(model.sphere_radii)
    assert set(model.sphere_links) == set(ARM_LINKS) | {'panda_hand'}
    assert np.all(model.sphere_radii > 0)


def test_urdf_declares_required_frames_and_finger_joints():
    """The URDF has every named frame and prismatic fingers over 0..0.04 m."""
    full = pin.buildModelFromUrdf(str(urdf_path('panda.urdf')))
    for name in COMPARED_FRAMES + ['panda_link0', 'panda_leftfinger', 'panda_rightfinger',
                                   'panda_tcp']:
        assert full.existFrame(name), name
    for name in ('panda_finger_joint1', 'panda_finger_joint2'):
        jid = full.getJointId(name)
        kind = full.joints[jid].shortname()
        assert kind in ('JointModelPY', 'JointModelPrismaticUnaligned'), kind
        idx = full.joints[jid].idx_q
        assert full.lowerPositionLimit[idx] == 0.0
        assert full.upperPositionLimit[idx] == pytest.approx(0.04)


def test_random_configuration_is_uniform_within_limits(model):
    """Random configurations fill the joint box."""
    qs = _configs(model, 2000, seed=7)
    lim = model.limits
    assert np.all(qs >= lim.lower) and np.all(qs <= lim.upper)
    # each joint spreads over its range (not a constant or a corner)
    span = (qs.max(0) - qs.min(0)) / (lim.upper - lim.lower)
    assert np.all(span > 0.95)
    np.testing.assert_allclose(qs.mean(0), (lim.lower + lim.upper) / 2,
                               atol=0.05 * float(np.max(lim.upper - lim.lower)))


# ------------------------------------------------------------------------------ sphere coverage
def _read_obj(path: str) -> tuple[np.ndarray, np.ndarray]:
    vertices, faces = [], []
    with open(path, encoding='utf-8') as stream:
        for line in stream:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == 'v':
                vertices.append([float(x) for x in parts[1:4]])
            elif parts[0] == 'f':
                idx = [int(token.split('/')[0]) - 1 for token in parts[1:]]
                faces += [[idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1)]
    return np.array(vertices), np.array(faces)


def _surface_points(path: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Mesh vertices plus ``n`` points uniform on its triangles (area-weighted)."""
    verts, faces = _read_obj(path)
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    pick = rng.choice(len(faces), size=n, p=area / area.sum())
    uv = rng.random((n, 2))
    flip = uv.sum(1) > 1
    uv[flip] = 1 - uv[flip]
    pts = a[pick] + uv[:, :1] * (b[pick] - a[pick]) + uv[:, 1:] * (c[pick] - a[pick])
    return np.vstack([verts, pts])


def _bullet_collision_points(bullet, link: str, rng) -> np.ndarray:
    """World surface points of a link's PyBullet collision mesh, placed by PyBullet itself."""
    client, body, links, _ = bullet
    index = links[link]
    shapes = pb.getCollisionShapeData(body, index, physicsClientId=client)
    state = pb.getLinkState(body, index, computeForwardKinematics=1, physicsClientId=client)
    out = []
    for shape in shapes:
        assert shape[2] == pb.GEOM_MESH
        local = _surface_points(shape[4].decode(), 4000, rng) * np.array(shape[3])
        # collision frame is given relative to the link's inertial frame (state[0:2])
        pos, orn = pb.multiplyTransforms(state[0], state[1], shape[5], shape[6])
        rot = np.array(pb.getMatrixFromQuaternion(orn)).reshape(3, 3)
        out.append(local @ rot.T + np.array(pos))
    return np.vstack(out)


def _max_outside(points: np.ndarray, centers: np.ndarray, radii: np.ndarray) -> float:
    """Largest distance by which a point lies outside every sphere (<= 0: all covered)."""
    dist = np.linalg.norm(points[:, None, :] - centers[None], axis=2) - radii[None]
    return float(dist.min(axis=1).max())


@pytest.mark.parametrize('finger_m', [0.0, 0.02, 0.04])
def test_spheres_cover_pybullet_collision_meshes(model, bullet, finger_m):
    """Each link's spheres contain its PyBullet collision mesh; hand spheres hold the fingers."""
    rng = np.random.default_rng(8)
    links = np.array(model.sphere_links)
    owners = {link: link for link in ARM_LINKS + ['panda_hand']}
    owners.update(panda_leftfinger='panda_hand', panda_rightfinger='panda_hand')
    configs = np.vstack([model.q_home, _configs(model, 3, seed=9)])
    for q in configs:
        _set_bullet(bullet, q, finger_m)
        kin = model.kinematics(q)
        for link, owner in owners.items():
            mine = links == owner
            points = _bullet_collision_points(bullet, link, rng)
            outside = _max_outside(points, kin.sphere_centers[mine], model.sphere_radii[mine])
            assert outside <= 0.0, f'{link} sticks {outside * 1e3:.1f} mm out of its spheres'


def test_hand_spheres_stay_shallow_below_the_fingertips(model):
    """Pushing needs the fingertips near the table: spheres may reach only 12 mm past them."""
    fingertip_hand_z_m = 0.0584 + 0.054  # finger joint origin + finger mesh length
    q = model.q_home
    hand_pos, hand_rot = model.frame_pose(q, 'panda_hand')
    on_hand = np.array(model.sphere_links) == 'panda_hand'
    local = (model.sphere_centers(q)[on_hand] - hand_pos) @ hand_rot  # rows: hand-frame centres
    deepest = float(np.max(local[:, 2] + model.sphere_radii[on_hand]))
    assert fingertip_hand_z_m < deepest < fingertip_hand_z_m + 0.012


def test_spheres_are_not_grossly_oversized(model):
    """Spheres stay tight enough to be useful."""
    # A sphere bigger than the arm's 0.11 m-wide links by far would make barriers useless.
    assert float(model.sphere_radii.max()) < 0.1


# ------------------------------------------------------------------------------ input checks
@pytest.mark.parametrize('bad_q', [
    np.zeros(6), np.zeros(8), np.zeros((7, 1)), np.zeros((1, 7)), [],
    [0, 0, 0, np.nan, 0, 0, 0], [0, 0, 0, 0, np.inf, 0, 0], [0, 0, 0, 0, 0, 0, -np.inf],
    ['a'] * 7, None,
])
def test_bad_q_raises_value_error(model, bad_q):
    """Wrong shapes, non-finite and non-numeric q raise ValueError everywhere."""
    for call in (model.kinematics, model.ee_pose, model.ee_jacobian, model.sphere_centers,
                 model.sphere_jacobians, lambda q: model.frame_pose(q, 'panda_hand')):
        with pytest.raises(ValueError):
            call(bad_q)


def test_unknown_frame_raises_value_error(model):
    """An unknown frame name raises ValueError."""
    with pytest.raises(ValueError, match='unknown frame'):
        model.frame_pose(model.q_home, 'panda_link99')


def test_q_as_list_is_accepted(model):
    """Plain lists work as q."""
    pos_list, _ = model.ee_pose(list(model.q_home))
    pos_arr, _ = model.ee_pose(model.q_home)
    np.testing.assert_array_equal(pos_list, pos_arr)


def test_config_rejects_malformed_yaml(tmp_path):
    """Malformed model YAML raises ValueError naming the key."""
    with open(urdf_path('panda_model.yaml'), encoding='utf-8') as stream:
        good = yaml.safe_load(stream)['panda_model']
    PandaModelConfig.from_dict(good)  # the shipped file is valid
    missing = {k: v for k, v in good.items() if k != 'jerk_limits_radps3'}
    with pytest.raises(ValueError, match='jerk_limits_radps3'):
        PandaModelConfig.from_dict(missing)
    short = dict(good, acceleration_limits_radps2=[1.0] * 6)
    with pytest.raises(ValueError, match='acceleration_limits_radps2'):
        PandaModelConfig.from_dict(short)
    spheres = dict(good['collision_spheres_m'], radii=good['collision_spheres_m']['radii'][:-1])
    with pytest.raises(ValueError, match='radii'):
        PandaModelConfig.from_dict(dict(good, collision_spheres_m=spheres))
    bad_file = tmp_path / 'model.yaml'
    bad_file.write_text('something_else: {}\n')
    with pytest.raises(ValueError, match='panda_model'):
        FrankaModel(model_yaml=bad_file)
    with pytest.raises(ValueError, match='unknown frame'):
        bad_link = dict(good['collision_spheres_m'],
                        links=['panda_link42'] * len(good['collision_spheres_m']['radii']))
        path = tmp_path / 'bad_link.yaml'
        path.write_text(yaml.safe_dump({'panda_model': dict(good, collision_spheres_m=bad_link)}))
        FrankaModel(model_yaml=path)
