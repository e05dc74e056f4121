"""ArmBackend on the PyBullet world, stepped lock-step by its owner.

Physics time only advances in :meth:`PyBulletBackend.advance`; a command watchdog (simulated
time) holds the arm when commands stop arriving for ``command_timeout_s``, like the real driver.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from genpolicy_ros.drivers.backend import ArmState, validate_joint_command
from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.world import PandaWorld


class PyBulletBackend:
    """:class:`~genpolicy_ros.drivers.backend.ArmBackend` for :class:`PandaWorld`.

    ``world`` stays accessible for the sim-only parts (camera, task objects). A world passed
    in is not closed by :meth:`close`; one created here is.
    """

    def __init__(self, world: Optional[PandaWorld] = None,
                 config: Optional[SimConfig] = None) -> None:
        self._owns_world = world is None
        self.world = world if world is not None else PandaWorld(config)
        self.joint_names: List[str] = list(self.world.joint_names)
        self.command_timeout_s = self.world.config.command_timeout_s
        self._last_command_time = self.world.sim_time
        self._holding = False
        self.timed_out = False

    def read_state(self) -> ArmState:
        """Return the simulated joint state stamped with simulated time [s]."""
        q, dq, tau = self.world.joint_state()
        return ArmState(q=q, dq=dq, tau=tau, stamp=self.world.sim_time,
                        gripper_width=self.world.gripper_width())

    def command(self, q: np.ndarray, dq: np.ndarray) -> None:
        """Set joint position + velocity targets; ValueError on bad input (arm untouched)."""
        q, dq = validate_joint_command(q, dq, len(self.joint_names))
        self.world.set_joint_targets(q, dq)
        self._last_command_time = self.world.sim_time
        self._holding = False
        self.timed_out = False

    def stop(self) -> None:
        """Hold the current joint positions with zero velocity target."""
        q, _, _ = self.world.joint_state()
        self.world.set_joint_targets(q, np.zeros_like(q))
        self._holding = True

    def reset_watchdog(self) -> None:
        """Restart the command timeout clock (after a world reset)."""
        self._last_command_time = self.world.sim_time
        self._holding = False
        self.timed_out = False

    def advance(self, dt_s: float) -> None:
        """Step the physics by ``dt_s`` seconds (rounded to whole physics steps).

        If the last command becomes older than ``command_timeout_s`` during this interval the
        arm is switched to hold at that instant, not at the end of the interval.
        """
        if dt_s < 0.0:
            raise ValueError(f'dt_s must be >= 0, got {dt_s}')
        steps = int(round(dt_s * self.world.physics_hz))
        while steps > 0:
            if self._holding:
                self.world.step(steps)
                return
            deadline = self._last_command_time + self.command_timeout_s
            until = int(np.ceil((deadline - self.world.sim_time) * self.world.physics_hz - 1e-9))
            if until >= steps:
                self.world.step(steps)
                return
            if until > 0:
                self.world.step(until)
                steps -= until
            self.stop()
            self.timed_out = True

    def close(self) -> None:
        """Hold the arm and release the world if this backend created it."""
        if self.world.client >= 0:
            self.stop()
        if self._owns_world:
            self.world.close()
