"""Message <-> numpy conversions and the input checks made at every node's edge.

Every function either returns clean arrays or raises :class:`InputError` with a sentence an
operator can act on; nodes turn that into a throttled log line and a diagnostics entry.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Quaternion, Transform, Twist, Vector3
import numpy as np
from sensor_msgs.msg import CameraInfo, Image, JointState
from trajectory_msgs.msg import MultiDOFJointTrajectory, MultiDOFJointTrajectoryPoint


class InputError(ValueError):
    """A message that must not reach the math: the sentence says what is wrong with it."""


def stamp_to_s(stamp: Time) -> float:
    """Convert a ``builtin_interfaces/Time`` into seconds."""
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def s_to_stamp(t: float) -> Time:
    """Convert seconds into a ``builtin_interfaces/Time``."""
    sec = int(np.floor(t))
    return Time(sec=sec, nanosec=int(round((t - sec) * 1e9)) % 1_000_000_000)


def s_to_duration(t: float) -> Duration:
    """Convert seconds into a ``builtin_interfaces/Duration``."""
    sec = int(np.floor(t))
    return Duration(sec=sec, nanosec=int(round((t - sec) * 1e9)) % 1_000_000_000)


def duration_to_s(d: Duration) -> float:
    """Convert a ``builtin_interfaces/Duration`` into seconds."""
    return float(d.sec) + 1e-9 * float(d.nanosec)


# ---------------------------------------------------------------- joint states / commands
def joint_arrays(msg: JointState, names: Sequence[str],
                 need_velocity: bool = False) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Return ``(position, velocity)`` of ``names`` from ``msg``, in the order of ``names``.

    Extra joints (fingers) are ignored; a missing joint, mismatched array lengths or a
    non-finite value raises :class:`InputError`. ``velocity`` is None when the message has none
    and ``need_velocity`` is False.
    """
    n = len(msg.name)
    if len(msg.position) != n:
        raise InputError(f'JointState has {n} names but {len(msg.position)} positions')
    if len(msg.velocity) not in (0, n):
        raise InputError(f'JointState has {n} names but {len(msg.velocity)} velocities')
    if need_velocity and len(msg.velocity) == 0:
        raise InputError('JointState carries no velocity but a velocity is required')
    index = {name: i for i, name in enumerate(msg.name)}
    missing = [name for name in names if name not in index]
    if missing:
        raise InputError(f'JointState lacks joints {missing} (has {list(msg.name)})')
    order = [index[name] for name in names]
    pos = np.asarray(msg.position, dtype=float)[order]
    vel = np.asarray(msg.velocity, dtype=float)[order] if len(msg.velocity) else None
    if not np.all(np.isfinite(pos)) or (vel is not None and not np.all(np.isfinite(vel))):
        raise InputError('JointState contains NaN or Inf')
    return pos, vel


# Finite is not enough: 1e12 rad passes isfinite and drives kinematics and position servos
# to nonsense. A measured position beyond the joint's range by more than this, or a measured
# speed above this multiple of its limit, cannot come from the arm (its end stops sit within a
# few degrees of the limits; its motors cannot exceed their speed limit twofold).
MEASURED_POSITION_MARGIN_RAD = 0.1
MEASURED_VELOCITY_FACTOR = 2.0
# A command's position target may sit as far outside the range as a measurement (the filter
# anchors targets on its previous target, which can lead a sagging arm), but its velocity must
# be within the limits (float slack only).
COMMAND_POSITION_MARGIN_RAD = MEASURED_POSITION_MARGIN_RAD
COMMAND_VELOCITY_FACTOR = 1.01


def check_joint_ranges(position: np.ndarray, velocity: Optional[np.ndarray],
                       lower: np.ndarray, upper: np.ndarray, velocity_limits: np.ndarray,
                       position_margin_rad: float = MEASURED_POSITION_MARGIN_RAD,
                       velocity_factor: float = MEASURED_VELOCITY_FACTOR) -> None:
    """Raise :class:`InputError` if joint positions/velocities are physically implausible.

    A position outside ``[lower - margin, upper + margin]`` or a speed above
    ``velocity_factor * velocity_limits`` is refused (defaults: a measured joint state; pass
    ``COMMAND_*`` for a command).
    """
    below = np.asarray(lower) - position_margin_rad - position
    above = position - np.asarray(upper) - position_margin_rad
    j = int(np.argmax(np.maximum(below, above)))
    if below[j] > 0.0 or above[j] > 0.0:
        raise InputError(f'joint {j + 1} position {position[j]:.6g} rad is outside its range '
                         f'[{lower[j]:.4f}, {upper[j]:.4f}] rad (+/- {position_margin_rad} rad)')
    if velocity is not None:
        ratio = np.abs(velocity) / (velocity_factor * np.asarray(velocity_limits))
        j = int(np.argmax(ratio))
        if ratio[j] > 1.0:
            raise InputError(f'joint {j + 1} velocity {velocity[j]:.6g} rad/s exceeds '
                             f'{velocity_factor:g} x its limit {velocity_limits[j]:.4f} rad/s')


def make_joint_state(names: Sequence[str], stamp: Time, position: np.ndarray,
                     velocity: Optional[np.ndarray] = None,
                     effort: Optional[np.ndarray] = None) -> JointState:
    """Build a ``sensor_msgs/JointState``."""
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = list(names)
    msg.position = [float(x) for x in position]
    if velocity is not None:
        msg.velocity = [float(x) for x in velocity]
    if effort is not None:
        msg.effort = [float(x) for x in effort]
    return msg


# ---------------------------------------------------------------- images
def image_to_numpy(msg: Image) -> np.ndarray:
    """Decode an rgb8/bgr8 ``sensor_msgs/Image`` into an (H, W, 3) uint8 RGB array."""
    if msg.encoding not in ('rgb8', 'bgr8'):
        raise InputError(f'image encoding {msg.encoding!r} is not rgb8 or bgr8')
    if msg.height == 0 or msg.width == 0:
        raise InputError('image has zero size')
    if msg.step < 3 * msg.width or len(msg.data) != msg.step * msg.height:
        raise InputError(f'image data has {len(msg.data)} bytes, expected step*height = '
                         f'{msg.step}*{msg.height} with step >= 3*width')
    buf = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step)
    img = buf[:, :3 * msg.width].reshape(msg.height, msg.width, 3)
    return np.ascontiguousarray(img[..., ::-1] if msg.encoding == 'bgr8' else img)


def fit_image(img: np.ndarray, size: int) -> np.ndarray:
    """Return an (H, W, 3) frame as the policy's ``size`` x ``size`` input.

    A larger frame is centre-cropped to a square and shrunk by bilinear sampling at the output
    pixels' centres: the central square of a camera with the policy camera's vertical field of
    view sees what the policy's square images saw (a 640x480 stream of the sim's camera crops
    to its 96x96 render). Sampling, not area averaging: the renderer that made the training
    images takes one sample per pixel, so edges there are hard; averaged edges blend the cube
    and the table into hues no training frame had, and the monitor's colour check held the arm
    on every frame of a 640x480 stream (score 2.1-2.7 vs 0.4-0.5 rendered at 96x96). A smaller
    frame raises :class:`InputError`: enlarging it would invent detail.
    """
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    if min(h, w) < size:
        raise InputError(f'image is {w}x{h}, smaller than the policy input {size}x{size}')
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    import cv2  # only nodes that resize need OpenCV
    return cv2.resize(np.ascontiguousarray(img[y0:y0 + side, x0:x0 + side]), (size, size),
                      interpolation=cv2.INTER_LINEAR)


def numpy_to_image(img: np.ndarray, stamp: Time, frame_id: str) -> Image:
    """Encode an (H, W, 3) uint8 RGB array as an rgb8 ``sensor_msgs/Image``."""
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InputError(f'expected an (H, W, 3) uint8 image, got {img.shape} {img.dtype}')
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(img.shape[0]), int(img.shape[1])
    msg.encoding = 'rgb8'
    msg.is_bigendian = 0
    msg.step = 3 * msg.width
    msg.data = np.ascontiguousarray(img).tobytes()
    return msg


def make_camera_info(width: int, height: int, k: np.ndarray, p: np.ndarray, stamp: Time,
                     frame_id: str) -> CameraInfo:
    """Build a ``sensor_msgs/CameraInfo`` for an undistorted pinhole camera."""
    msg = CameraInfo()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = 'plumb_bob'
    msg.d = [0.0] * 5
    msg.k = [float(x) for x in np.asarray(k, dtype=float).ravel()]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [float(x) for x in np.asarray(p, dtype=float).ravel()]
    return msg


# ---------------------------------------------------------------- action chunks
# EE targets are in the world frame, whose origin is the robot base. A Panda/FR3 reaches 0.855 m:
# a point further than this is no target of the arm but corrupt data (1e12 m passes isfinite).
PLAUSIBLE_TARGET_RADIUS_M = 3.0


@dataclass
class ChunkArrays:
    """An EE pose trajectory: what ``MultiDOFJointTrajectory`` carries, as arrays."""

    stamp_s: float                 # observation time the chunk was computed from [s]
    frame_id: str
    times_from_start_s: np.ndarray  # (H,)
    positions: np.ndarray           # (H, 3) [m]
    orientations: np.ndarray        # (H, 4) quaternions x, y, z, w


def chunk_to_msg(chunk: ChunkArrays, joint_name: str = 'ee') -> MultiDOFJointTrajectory:
    """Encode one EE trajectory (one "joint") as a ``MultiDOFJointTrajectory``."""
    msg = MultiDOFJointTrajectory()
    msg.header.stamp = s_to_stamp(chunk.stamp_s)
    msg.header.frame_id = chunk.frame_id
    msg.joint_names = [joint_name]
    for t, p, q in zip(chunk.times_from_start_s, chunk.positions, chunk.orientations):
        pt = MultiDOFJointTrajectoryPoint()
        pt.transforms = [_transform(p, q)]
        pt.time_from_start = s_to_duration(float(t))
        msg.points.append(pt)
    return msg


def samples_to_msg(stamp_s: float, frame_id: str, times_from_start_s: np.ndarray,
                   samples: np.ndarray, orientation: np.ndarray) -> MultiDOFJointTrajectory:
    """Encode N sampled chunks (N, H, 3) as one trajectory with joints ``sample_0..N-1``."""
    msg = MultiDOFJointTrajectory()
    msg.header.stamp = s_to_stamp(stamp_s)
    msg.header.frame_id = frame_id
    msg.joint_names = [f'sample_{i}' for i in range(samples.shape[0])]
    for h, t in enumerate(times_from_start_s):
        pt = MultiDOFJointTrajectoryPoint()
        pt.transforms = [_transform(samples[i, h], orientation) for i in range(samples.shape[0])]
        pt.time_from_start = s_to_duration(float(t))
        msg.points.append(pt)
    return msg


def msg_to_chunk(msg: MultiDOFJointTrajectory, expected_frame: str,
                 quat_tolerance: float = 1e-3) -> ChunkArrays:
    """Decode and check a single-EE chunk; raises :class:`InputError` on anything malformed."""
    positions, orientations, times = _trajectory_arrays(msg, expected_frame)
    if positions.shape[1] != 1:
        raise InputError(f'action chunk must carry one EE "joint", got {msg.joint_names}')
    _check_quaternions(orientations[:, 0], quat_tolerance)
    return ChunkArrays(stamp_to_s(msg.header.stamp), msg.header.frame_id, times,
                       positions[:, 0], orientations[:, 0] / np.linalg.norm(
                           orientations[:, 0], axis=1, keepdims=True))


def msg_to_samples(msg: MultiDOFJointTrajectory,
                   expected_frame: str) -> Tuple[float, np.ndarray, np.ndarray]:
    """Decode a samples message into ``(stamp_s, times (H,), samples (N, H, 3))``."""
    positions, _, times = _trajectory_arrays(msg, expected_frame)
    return stamp_to_s(msg.header.stamp), times, np.transpose(positions, (1, 0, 2))


def _trajectory_arrays(msg: MultiDOFJointTrajectory,
                       expected_frame: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    if msg.header.frame_id != expected_frame:
        raise InputError(f'trajectory frame {msg.header.frame_id!r} is not {expected_frame!r}')
    if not msg.points:
        raise InputError('trajectory has no points')
    n_joints = len(msg.joint_names)
    if n_joints == 0:
        raise InputError('trajectory names no joints')
    pos: List[List[List[float]]] = []
    rot: List[List[List[float]]] = []
    times = []
    for k, pt in enumerate(msg.points):
        if len(pt.transforms) != n_joints:
            raise InputError(f'point {k} has {len(pt.transforms)} transforms for '
                             f'{n_joints} joints')
        pos.append([[t.translation.x, t.translation.y, t.translation.z] for t in pt.transforms])
        rot.append([[t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w]
                    for t in pt.transforms])
        times.append(duration_to_s(pt.time_from_start))
    positions, orientations = np.asarray(pos, dtype=float), np.asarray(rot, dtype=float)
    times_arr = np.asarray(times, dtype=float)
    if not (np.all(np.isfinite(positions)) and np.all(np.isfinite(orientations))):
        raise InputError('trajectory contains NaN or Inf')
    reach = float(np.max(np.linalg.norm(positions, axis=-1)))
    if reach > PLAUSIBLE_TARGET_RADIUS_M:
        raise InputError(f'trajectory point {reach:.3g} m from the robot base, beyond any '
                         f'target of the arm ({PLAUSIBLE_TARGET_RADIUS_M} m)')
    if np.any(np.diff(times_arr) <= 0.0):
        raise InputError('trajectory time_from_start is not strictly increasing')
    return positions, orientations, times_arr


def _check_quaternions(quats: np.ndarray, tolerance: float) -> None:
    norms = np.linalg.norm(quats, axis=-1)
    if np.any(np.abs(norms - 1.0) > tolerance):
        raise InputError(f'quaternion norms {norms.min():.4f}..{norms.max():.4f} are not 1 '
                         f'(tolerance {tolerance})')


def _transform(p: np.ndarray, q: np.ndarray) -> Transform:
    return Transform(translation=Vector3(x=float(p[0]), y=float(p[1]), z=float(p[2])),
                     rotation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]),
                                         w=float(q[3])))


def make_twist(v: np.ndarray) -> Twist:
    """Build a ``geometry_msgs/Twist`` from a 6-vector [linear; angular]."""
    return Twist(linear=Vector3(x=float(v[0]), y=float(v[1]), z=float(v[2])),
                 angular=Vector3(x=float(v[3]), y=float(v[4]), z=float(v[5])))
