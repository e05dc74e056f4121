"""Configuration of the flow-matching policy: model, training and runtime settings.

Three dataclasses, none with default values: every default lives in a YAML file under
``config/`` (the one definition of every number).

- :class:`PolicyConfig` -- model hyperparameters. Saved *inside* every checkpoint, so a
  checkpoint always rebuilds the network it was trained with; the training YAML
  (``config/train_policy.yaml``, ``model:`` section) only seeds new trainings.
- :class:`TrainConfig` -- optimisation settings (``train:`` section of the same file).
- :class:`PolicyRuntimeConfig` -- what the policy node uses at run time: checkpoint, number of
  integration steps, number of samples, rate, chunk smoothing (``config/policy.yaml``).
"""

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Type, TypeVar

import yaml

from genpolicy_ros.paths import config_path

T = TypeVar('T')

TRAIN_YAML = 'train_policy.yaml'
TRAIN_NODE = 'genpolicy_train'
RUNTIME_YAML = 'policy.yaml'
RUNTIME_NODE = 'policy_node'

SMOOTHING_MODES = ('none', 'blend', 'ensemble')
SELECTION_MODES = ('first', 'medoid')
ACTION_FRAMES = ('absolute', 'relative_ee')


def _from_dict(cls: Type[T], params: Dict[str, Any]) -> T:
    """Build dataclass ``cls`` from ``params``; unknown or missing keys are errors."""
    names = [f.name for f in fields(cls)]
    missing = [n for n in names if n not in params]
    unknown = [k for k in params if k not in names]
    if missing or unknown:
        raise KeyError(f'{cls.__name__}: missing keys {missing}, unknown keys {unknown}')
    return cls(**{n: params[n] for n in names})


def read_ros_params(path: Path, node_name: str) -> Dict[str, Any]:
    """Return the nested ``<node_name>: ros__parameters:`` block of a YAML file."""
    with open(path, 'r', encoding='utf-8') as f:
        doc = yaml.safe_load(f) or {}
    try:
        return doc[node_name]['ros__parameters']
    except (KeyError, TypeError) as exc:
        raise KeyError(f'{path} has no "{node_name}: ros__parameters:" block') from exc


@dataclass
class PolicyConfig:
    """Model hyperparameters (saved in the checkpoint).

    Observation: the last ``n_obs_steps`` camera frames (``image_size_px`` square, RGB) and the
    measured EE xy position; with ``goal_dim`` 2 also the task's goal xy, given relative to the
    measured EE xy (a task parameter the operator sets, not something the camera must find:
    in pushes toward the robot the arm hides the goal disc from the camera). Action: a chunk
    of ``horizon`` absolute EE xy targets [m] at ``decision_period_s`` spacing, of which
    ``n_action_steps`` are executed; z is the fixed ``push_height_m`` of the demonstrations.
    With ``action_frame`` ``relative_ee`` the network models the targets minus the EE xy
    measured at the observation (finer resolution for the few-cm steps of a chunk than
    absolute world xy); the policy outputs absolute targets.
    """

    n_obs_steps: int
    image_size_px: int
    horizon: int
    n_action_steps: int
    action_dim: int
    action_frame: str
    proprio_dim: int
    goal_dim: int
    decision_period_s: float
    push_height_m: float
    encoder_channels: List[int]
    encoder_strides: List[int]
    spatial_keypoints: int
    image_feature_dim: int
    obs_cond_dim: int
    unet_channels: List[int]
    unet_kernel_size: int
    unet_groups: int
    time_embed_dim: int
    aug_shift_px: int

    def __post_init__(self) -> None:
        self.encoder_channels = [int(c) for c in self.encoder_channels]
        self.encoder_strides = [int(s) for s in self.encoder_strides]
        self.unet_channels = [int(c) for c in self.unet_channels]
        if len(self.encoder_channels) != len(self.encoder_strides):
            raise ValueError('encoder_channels and encoder_strides must have the same length')
        if self.action_frame not in ACTION_FRAMES:
            raise ValueError(f'action_frame must be one of {ACTION_FRAMES}')
        if not 0 < self.n_action_steps <= self.horizon:
            raise ValueError('need 0 < n_action_steps <= horizon')
        if self.horizon % (2 ** (len(self.unet_channels) - 1)) != 0:
            raise ValueError('horizon must be divisible by 2**(len(unet_channels)-1)')
        if self.goal_dim not in (0, 2):
            raise ValueError(f'goal_dim must be 0 (no goal input) or 2 (goal xy), got '
                             f'{self.goal_dim}')

    @property
    def low_dim(self) -> int:
        """Width of the low-dimensional input: EE xy, then the relative goal xy if any."""
        return self.proprio_dim + self.goal_dim

    @classmethod
    def from_dict(cls, params: Dict[str, Any]) -> 'PolicyConfig':
        """Build from a dict with exactly the field names.

        A checkpoint written before the goal input existed has no ``goal_dim``: it had none (0).
        """
        if 'goal_dim' not in params:
            params = dict(params, goal_dim=0)
        return _from_dict(cls, params)

    @classmethod
    def load(cls, decision_period_s: float, push_height_m: float,
             path: Optional[Path] = None) -> 'PolicyConfig':
        """Read the ``model:`` section of ``config/train_policy.yaml`` (or ``path``).

        The decision period and push height are facts of the demonstrations (their
        ``meta.json``), not hyperparameters, so the caller passes them.
        """
        params = read_ros_params(Path(path) if path else config_path(TRAIN_YAML), TRAIN_NODE)
        return cls.from_dict(dict(params['model'], decision_period_s=float(decision_period_s),
                                  push_height_m=float(push_height_m)))

    def to_dict(self) -> Dict[str, Any]:
        """Return a plain dict (what the checkpoint stores)."""
        return asdict(self)


@dataclass
class TrainConfig:
    """Optimisation settings of :mod:`genpolicy_ros.policy.train`."""

    iters: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_iters: int
    grad_clip_norm: float
    ema_decay: float
    val_fraction: float
    val_batches: int
    checkpoint_every_iters: int
    log_every_iters: int
    seed: int
    threads: int
    policy_labels: str    # chunk labels of policy-driven (DAgger) episodes: recorded | expert_pace
    expert_pace: float    # expert_pace: the tracked expert's advance per decision / its step

    @classmethod
    def from_dict(cls, params: Dict[str, Any]) -> 'TrainConfig':
        """Build from a dict with exactly the field names.

        A run saved before the DAgger label choice existed used the recorded labels.
        """
        return _from_dict(cls, dict({'policy_labels': 'recorded', 'expert_pace': 1.0}, **params))

    @classmethod
    def load(cls, path: Optional[Path] = None) -> 'TrainConfig':
        """Read the ``train:`` section of ``config/train_policy.yaml`` (or ``path``)."""
        params = read_ros_params(Path(path) if path else config_path(TRAIN_YAML), TRAIN_NODE)
        return cls.from_dict(params['train'])

    def to_dict(self) -> Dict[str, Any]:
        """Return a plain dict."""
        return asdict(self)


@dataclass
class PolicyRuntimeConfig:
    """Run-time settings of the policy (``policy_node`` in ``config/policy.yaml``).

    ``checkpoint`` is a file name under ``checkpoints/`` or an absolute path. ``flow_steps`` is
    the number of Euler integration steps K, ``n_samples`` the number N of chunks sampled per
    decision (the monitor compares them); ``selection`` picks the executed chunk
    (``first``: sample 0, independent of N; ``medoid``: the sample closest to the mean).
    ``smoothing`` is how consecutive chunks are joined (``none``, ``blend``: linear cross-fade
    over ``blend_steps``, ``ensemble``: ACT-style temporal ensembling, chunk i (0 = oldest)
    weighted ``exp(-ensemble_decay * i)``).
    """

    checkpoint: str
    flow_steps: int
    n_samples: int
    selection: str
    seed: int
    decision_rate_hz: float
    n_action_steps: int
    smoothing: str
    blend_steps: int
    ensemble_decay: float
    torch_threads: int

    def __post_init__(self) -> None:
        if self.smoothing not in SMOOTHING_MODES:
            raise ValueError(f'smoothing must be one of {SMOOTHING_MODES}')
        if self.selection not in SELECTION_MODES:
            raise ValueError(f'selection must be one of {SELECTION_MODES}')
        if self.flow_steps < 1 or self.n_samples < 1:
            raise ValueError('flow_steps and n_samples must be >= 1')

    @classmethod
    def from_dict(cls, params: Dict[str, Any]) -> 'PolicyRuntimeConfig':
        """Build from a (nested or flat) ``ros__parameters`` dict of ``policy_node``."""
        names = {f.name for f in fields(cls)}
        return _from_dict(cls, {k: v for k, v in params.items() if k in names})

    @classmethod
    def load(cls, path: Optional[Path] = None) -> 'PolicyRuntimeConfig':
        """Read ``policy_node: ros__parameters:`` of ``config/policy.yaml`` (or ``path``)."""
        return cls.from_dict(
            read_ros_params(Path(path) if path else config_path(RUNTIME_YAML), RUNTIME_NODE))

    def to_dict(self) -> Dict[str, Any]:
        """Return a plain dict."""
        return asdict(self)
