"""Franka Panda robot model: kinematics (Pinocchio on urdf/), limits and collision spheres."""

from genpolicy_ros.robot.franka_model import (
    FrankaModel, JointLimits, Kinematics, PandaModelConfig)

__all__ = ['FrankaModel', 'JointLimits', 'Kinematics', 'PandaModelConfig']
