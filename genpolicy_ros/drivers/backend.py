"""Arm backend interface shared by the PyBullet simulation and a real Franka (pylibfranka).

Everything above the driver talks to an :class:`ArmBackend`; swapping the simulation for the
real arm changes only which backend object is built.
"""

from __future__ import annotations

import dataclasses
from typing import List, Protocol, Tuple, runtime_checkable

import numpy as np

N_JOINTS = 7


@dataclasses.dataclass
class ArmState:
    """Measured arm state.

    ``q`` [rad], ``dq`` [rad/s] and ``tau`` [Nm] are (7,) arrays in joint order
    ``joint_names``; ``stamp`` is the measurement time [s] (simulated time in PyBullet,
    robot time on hardware); ``gripper_width`` is the finger opening [m].
    """

    q: np.ndarray
    dq: np.ndarray
    tau: np.ndarray
    stamp: float
    gripper_width: float


@runtime_checkable
class ArmBackend(Protocol):
    """A 7-DoF arm driven by joint position + velocity targets."""

    joint_names: List[str]

    def read_state(self) -> ArmState:
        """Return the latest measured state."""
        ...

    def command(self, q: np.ndarray, dq: np.ndarray) -> None:
        """Send joint position [rad] and velocity [rad/s] targets, each (7,).

        Raises ValueError for non-finite or wrongly shaped input before touching the arm.
        """
        ...

    def stop(self) -> None:
        """Hold the arm at its current position."""
        ...

    def close(self) -> None:
        """Release the arm and any resources."""
        ...


def validate_joint_command(q: np.ndarray, dq: np.ndarray,
                           n_joints: int = N_JOINTS) -> Tuple[np.ndarray, np.ndarray]:
    """Return ``(q, dq)`` as float arrays or raise ValueError (wrong shape, NaN or Inf).

    Every backend calls this first, so a bad command never reaches the motors.
    """
    out = []
    for name, value in (('q', q), ('dq', dq)):
        try:
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f'{name} is not numeric: {exc}') from exc
        if arr.shape != (n_joints,):
            raise ValueError(f'{name} must have shape ({n_joints},), got {arr.shape}')
        if not np.all(np.isfinite(arr)):
            raise ValueError(f'{name} contains NaN or Inf: {arr.tolist()}')
        out.append(arr.copy())
    return out[0], out[1]
