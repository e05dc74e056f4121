"""Demonstration dataset: (observation window, action chunk) pairs from recorded episodes.

On disk (written by the demo recorder): a directory with ``meta.json`` and one compressed
``episode_XXXXX.npz`` per episode holding ``images`` (T, 96, 96, 3) uint8, ``ee_pos`` (T, 3),
``q`` (T, 7), ``action`` (T, 2) expert EE xy targets [m] (absolute, world frame),
``cube_pose`` (T, 7), ``goal`` (2,), ``success`` and ``seed``.

Sample at decision step t: frames t-n_obs+1 .. t (the first frame repeated before the episode
start), the measured EE xy at t (with the goal input: then the goal xy minus it), and actions
t .. t+H-1 (the last action repeated past the episode end: the expert holds its final target).
Every step of every episode is a sample.

Chunk labels of episodes a policy drove (DAgger, ``driver: policy``): the recorded targets
t+1 .. t+H-1 are the expert's labels at the states the *policy* reached, so they move at the
policy's pace (a policy at half the expert's pace is taught its own pace back).
``policy_labels='expert_pace'`` replaces them by :func:`expert_pace_chunk`: the expert's
recorded steps, advanced at the pace the filter-tracked expert achieves in its own episodes.
"""

from dataclasses import dataclass
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

PathLike = Union[str, Path]


@dataclass
class DemoMeta:
    """The facts of a demo set that the policy depends on."""

    push_height_m: float      # TCP target z [m] (meta.json ``tcp_push_z_m``)
    decision_period_s: float
    raw: Dict[str, Any]


def read_meta(demo_dir: PathLike) -> DemoMeta:
    """Read ``meta.json`` of a demo directory.

    The policy needs two facts from it: ``tcp_push_z_m`` (the TCP target z the actions imply;
    not ``push_height_m``, the fingertip height above the table) and ``rates_hz.decision``.
    """
    path = Path(demo_dir) / 'meta.json'
    with open(path, 'r', encoding='utf-8') as f:
        raw = json.load(f)
    try:
        height = float(raw['tcp_push_z_m'])
        rate = float(raw['rates_hz']['decision'])
    except (KeyError, TypeError) as exc:
        raise KeyError(f'{path}: needs tcp_push_z_m and rates_hz.decision') from exc
    return DemoMeta(push_height_m=height, decision_period_s=1.0 / rate, raw=raw)


def episode_files(demo_dir: PathLike) -> List[Path]:
    """Return the sorted episode files of a demo directory."""
    return sorted(Path(demo_dir).glob('episode_*.npz'))


class Normalizer:
    """Min-max scaling of actions and proprio to [-1, 1]; stats ship with the model.

    ``proprio`` is the low-dim input: EE xy, then (goal input) the goal xy relative to it.
    """

    def __init__(self, stats: Dict[str, np.ndarray]) -> None:
        self.stats = {k: np.asarray(v, dtype=np.float32) for k, v in stats.items()}
        for name in ('action', 'proprio'):
            lo, hi = self.stats[f'{name}_min'], self.stats[f'{name}_max']
            # A constant coordinate would divide by zero; give it a 1 mm range instead.
            self.stats[f'{name}_max'] = np.maximum(hi, lo + 1e-3)

    @classmethod
    def fit(cls, actions: np.ndarray, proprio: np.ndarray) -> 'Normalizer':
        """Fit on (M, A) actions and (M, P) proprio rows."""
        return cls({'action_min': actions.min(0), 'action_max': actions.max(0),
                    'proprio_min': proprio.min(0), 'proprio_max': proprio.max(0)})

    def state_dict(self) -> Dict[str, List[float]]:
        """Plain lists for the checkpoint."""
        return {k: v.tolist() for k, v in self.stats.items()}

    def _scale(self, name: str, like: Any) -> Tuple[Any, Any]:
        lo, hi = self.stats[f'{name}_min'], self.stats[f'{name}_max']
        if isinstance(like, torch.Tensor):
            return (torch.as_tensor(lo, dtype=like.dtype), torch.as_tensor(hi, dtype=like.dtype))
        return lo, hi

    def normalize(self, name: str, x: Any) -> Any:
        """Map ``name`` ('action' or 'proprio') values to [-1, 1] (numpy or torch)."""
        lo, hi = self._scale(name, x)
        return (x - lo) / (hi - lo) * 2.0 - 1.0

    def unnormalize(self, name: str, x: Any) -> Any:
        """Invert :meth:`normalize`."""
        lo, hi = self._scale(name, x)
        return (x + 1.0) * 0.5 * (hi - lo) + lo


@dataclass
class Episode:
    """One episode in memory."""

    images: np.ndarray   # (T, H, W, 3) uint8
    ee_xy: np.ndarray    # (T, 2) float32
    action: np.ndarray   # (T, 2) float32
    name: str
    goal: Optional[np.ndarray] = None  # (2,) float32 goal xy [m], if the file has one
    driver: str = 'expert'  # who executed: expert (noisy) or policy (DAgger); older files: expert


def load_episode(path: Path) -> Episode:
    """Load one ``episode_XXXXX.npz``."""
    with np.load(path) as data:
        images = np.ascontiguousarray(data['images'], dtype=np.uint8)
        ee = np.asarray(data['ee_pos'], dtype=np.float32)[:, :2]
        action = np.asarray(data['action'], dtype=np.float32)
        goal = np.asarray(data['goal'], dtype=np.float32).reshape(2) if 'goal' in data else None
        driver = str(data['driver']) if 'driver' in data else 'expert'
    if not (len(images) == len(ee) == len(action)) or len(images) == 0:
        raise ValueError(f'{path}: images/ee_pos/action lengths differ or are empty')
    if not (np.isfinite(ee).all() and np.isfinite(action).all()):
        raise ValueError(f'{path}: non-finite values')
    if goal is not None and not np.isfinite(goal).all():
        raise ValueError(f'{path}: non-finite goal')
    return Episode(images, ee, action, path.stem, goal, driver)


POLICY_LABELS = ('recorded', 'expert_pace')


def expert_pace_chunk(ee_xy: np.ndarray, action: np.ndarray, horizon: int,
                      pace: float) -> np.ndarray:
    """Return (T, H, 2) absolute label chunks that advance at the expert's pace.

    The expert's step at visited state j is ``d_j = action[j] - ee_xy[j]`` (its full step,
    ``max_step_m``). From the EE at t a virtual TCP ``p`` advances ``pace * d_j`` per step
    (``pace``: the fraction of its step the filter-tracked expert covers per decision in its own
    episodes), and label k is ``p_k + d_{t+k}`` - what a recorded expert episode labels, a
    target one step ahead of the TCP. Past the episode end the last label holds, as the recorded
    labels do. With exact tracking (``ee_xy[t+1] == action[t]``) and ``pace`` 1 the chunks are
    the recorded ones.
    """
    ee = np.asarray(ee_xy, dtype=np.float64)
    act = np.asarray(action, dtype=np.float64)
    n = len(act)
    idx = np.clip(np.arange(n)[:, None] + np.arange(horizon)[None, :], 0, n - 1)
    steps = (act - ee)[idx]                                       # (T, H, 2): d_{t+k}
    travelled = np.cumsum(steps, axis=1) - steps                  # sum_{j<k} d_{t+j}
    labels = ee[:, None, :] + pace * travelled + steps
    held = np.minimum(np.arange(horizon)[None, :], (n - 1 - np.arange(n))[:, None])
    return np.take_along_axis(labels, held[:, :, None], axis=1).astype(np.float32)


def low_dim_input(ee_xy: np.ndarray, goal_xy: Optional[np.ndarray] = None) -> np.ndarray:
    """Return the policy's (B, P) low-dim input: EE xy, then goal xy minus EE xy if a goal.

    The one definition for training rows and run-time observations alike. ``ee_xy`` (B, 2),
    ``goal_xy`` (B, 2) or (2,) [m]; float32 out.
    """
    ee = np.asarray(ee_xy, dtype=np.float32)
    if goal_xy is None:
        return ee
    return np.concatenate([ee, np.asarray(goal_xy, dtype=np.float32) - ee], axis=-1)


def split_episodes(n_episodes: int, val_fraction: float, seed: int) -> Tuple[List[int],
                                                                             List[int]]:
    """Split episode indices into (train, val) by episode, reproducibly."""
    order = np.random.default_rng(seed).permutation(n_episodes)
    n_val = int(round(val_fraction * n_episodes))
    if val_fraction > 0 and n_episodes >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, n_episodes - 1)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


class ChunkDataset:
    """In-memory (obs window, action chunk) samples from a list of episodes.

    With ``relative`` the action chunk is given relative to the EE xy measured at the
    observation step (``action_frame: relative_ee``). With ``goal`` the proprio row is the EE xy
    followed by the episode's goal xy minus it (``goal_dim: 2``). ``policy_labels`` and
    ``expert_pace``: the chunk labels of policy-driven episodes (module docstring).
    """

    def __init__(self, episodes: List[Episode], n_obs_steps: int, horizon: int,
                 relative: bool, goal: bool = False, policy_labels: str = 'recorded',
                 expert_pace: float = 1.0) -> None:
        if not episodes:
            raise ValueError('no episodes')
        if policy_labels not in POLICY_LABELS:
            raise ValueError(f'policy_labels must be one of {POLICY_LABELS}, got '
                             f'{policy_labels!r}')
        if not 0.0 < expert_pace <= 1.0:
            raise ValueError(f'expert_pace must be in (0, 1], got {expert_pace}')
        if goal:
            missing = [ep.name for ep in episodes if ep.goal is None]
            if missing:
                raise ValueError(f'the goal input needs a goal in every episode; none in '
                                 f'{missing[:3]} ({len(missing)} episodes)')
        self.goal = goal
        self.episodes = episodes
        self.n_obs = n_obs_steps
        self.horizon = horizon
        self.relative = relative
        # Per episode: (T, H, 2) label chunks replacing the recorded ones, or None.
        self.chunks = [expert_pace_chunk(ep.ee_xy, ep.action, horizon, expert_pace)
                       if policy_labels == 'expert_pace' and ep.driver == 'policy' else None
                       for ep in episodes]
        self.index = np.array([(e, t) for e, ep in enumerate(episodes)
                               for t in range(len(ep.action))], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def get(self, rows: np.ndarray, with_images: bool = True) -> Dict[str, np.ndarray]:
        """Return raw (unnormalised) arrays for sample rows: images, proprio, action."""
        b = len(rows)
        ep0 = self.episodes[0]
        images = np.empty((b if with_images else 0, self.n_obs) + ep0.images.shape[1:],
                          dtype=np.uint8)
        ee_xy = np.empty((b, ep0.ee_xy.shape[1]), dtype=np.float32)
        goal_xy = np.empty((b, 2), dtype=np.float32) if self.goal else None
        action = np.empty((b, self.horizon, ep0.action.shape[1]), dtype=np.float32)
        for i, (e, t) in enumerate(self.index[rows]):
            ep = self.episodes[e]
            n = len(ep.action)
            if with_images:
                images[i] = ep.images[np.clip(np.arange(t - self.n_obs + 1, t + 1), 0, n - 1)]
            ee_xy[i] = ep.ee_xy[t]
            if goal_xy is not None:
                goal_xy[i] = ep.goal
            chunks = self.chunks[e]
            action[i] = (chunks[t] if chunks is not None
                         else ep.action[np.clip(np.arange(t, t + self.horizon), 0, n - 1)])
        if self.relative:
            action -= ee_xy[:, None, :]
        return {'images': images, 'proprio': low_dim_input(ee_xy, goal_xy), 'action': action}

    def batch(self, rows: np.ndarray, normalizer: Normalizer) -> Dict[str, torch.Tensor]:
        """Return a training batch: uint8 images, normalised proprio and action tensors."""
        raw = self.get(rows)
        return {'images': torch.from_numpy(raw['images']),
                'proprio': torch.from_numpy(normalizer.normalize('proprio', raw['proprio'])),
                'action': torch.from_numpy(normalizer.normalize('action', raw['action']))}

    def fit_normalizer(self) -> Normalizer:
        """Fit min-max stats on every action chunk and proprio row of these samples."""
        raw = self.get(np.arange(len(self)), with_images=False)
        return Normalizer.fit(raw['action'].reshape(-1, raw['action'].shape[-1]),
                              raw['proprio'])


def load_demos(demo_dirs: Union[PathLike, Sequence[PathLike]], n_obs_steps: int, horizon: int,
               relative: bool, val_fraction: float, seed: int,
               max_episodes: Optional[int] = None, progress: bool = False, goal: bool = False,
               policy_labels: str = 'recorded', expert_pace: float = 1.0
               ) -> Tuple[ChunkDataset, Optional[ChunkDataset], DemoMeta, List[str]]:
    """Load one or several demo directories into (train, val or None, meta, val names).

    Several directories (e.g. the original demos plus DAgger rounds) must agree on the facts
    the policy depends on (push height, decision period); the meta returned is the first's,
    with the directory list added. ``max_episodes`` applies per directory. Validation
    episodes are drawn from every directory alike (by episode, reproducibly). ``goal``: the
    goal input, ``policy_labels`` / ``expert_pace`` the labels of policy-driven episodes (see
    :class:`ChunkDataset`).
    """
    dirs = [demo_dirs] if isinstance(demo_dirs, (str, Path)) else list(demo_dirs)
    if not dirs:
        raise ValueError('no demo directory given')
    metas = [read_meta(d) for d in dirs]
    for d, m in zip(dirs[1:], metas[1:]):
        if (abs(m.push_height_m - metas[0].push_height_m) > 1e-9
                or abs(m.decision_period_s - metas[0].decision_period_s) > 1e-9):
            raise ValueError(f'{d}: push height / decision period differ from {dirs[0]} '
                             f'({m.push_height_m}, {m.decision_period_s} vs '
                             f'{metas[0].push_height_m}, {metas[0].decision_period_s})')
    files: List[Path] = []
    for d in dirs:
        found = episode_files(d)[:max_episodes]
        if not found:
            raise FileNotFoundError(f'no episode_*.npz in {d}')
        files.extend(found)
    if progress:
        from tqdm import tqdm
        files_iter = tqdm(files, desc='loading episodes', unit='ep')
    else:
        files_iter = files
    episodes = [load_episode(p) for p in files_iter]
    if len(dirs) > 1:  # episode names must stay unique across directories
        for ep, path in zip(episodes, files):
            ep.name = f'{path.parent.name}/{path.stem}'
    train_idx, val_idx = split_episodes(len(episodes), val_fraction, seed)
    labels = dict(policy_labels=policy_labels, expert_pace=expert_pace)
    train = ChunkDataset([episodes[i] for i in train_idx], n_obs_steps, horizon, relative, goal,
                         **labels)
    val = (ChunkDataset([episodes[i] for i in val_idx], n_obs_steps, horizon, relative, goal,
                        **labels) if val_idx else None)
    meta = metas[0]
    if len(dirs) > 1:
        meta = DemoMeta(meta.push_height_m, meta.decision_period_s,
                        dict(meta.raw, demo_dirs=[str(d) for d in dirs],
                             metas=[m.raw for m in metas]))
    return train, val, meta, [episodes[i].name for i in val_idx]


def write_synthetic_demos(out_dir: PathLike, n_episodes: int, length: int, seed: int,
                          image_size_px: int = 96, push_height_m: float = 0.02,
                          decision_rate_hz: float = 10.0) -> Path:
    """Write a small demo set in the recorder's format, for tests and smoke runs.

    Each episode draws a target square at a random place in the image and an EE that moves
    toward the matching world xy: the action is learnable from the image alone, so a trained
    policy must read the image.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    meta = {'tcp_push_z_m': push_height_m, 'rates_hz': {'decision': decision_rate_hz},
            'image_size_px': image_size_px, 'synthetic': True, 'seed': seed,
            'action_noise_std_m': 0.0}
    (out / 'meta.json').write_text(json.dumps(meta, indent=1))
    s = image_size_px
    for e in range(n_episodes):
        goal = rng.uniform(0.3, 0.6, size=2).astype(np.float32)  # world xy [m]
        px = ((goal - 0.3) / 0.3 * (s - 16) + 8).astype(int)
        ee = np.array([0.45, 0.45], dtype=np.float32) + rng.normal(0, 0.02, 2).astype(np.float32)
        images = np.zeros((length, s, s, 3), dtype=np.uint8)
        ee_pos = np.zeros((length, 3), dtype=np.float32)
        action = np.zeros((length, 2), dtype=np.float32)
        for t in range(length):
            images[t, px[1] - 4:px[1] + 4, px[0] - 4:px[0] + 4] = (255, 64, 0)
            ee_pos[t] = (ee[0], ee[1], push_height_m)
            step = goal - ee
            step *= min(1.0, 0.02 / (np.linalg.norm(step) + 1e-9))  # <= 2 cm per step
            action[t] = ee + step
            ee = action[t].copy()
        np.savez_compressed(out / f'episode_{e:05d}.npz', images=images, ee_pos=ee_pos,
                            q=np.zeros((length, 7), np.float32), action=action,
                            cube_pose=np.zeros((length, 7), np.float32), goal=goal,
                            success=np.bool_(True), seed=np.int64(seed + e))
    return out
