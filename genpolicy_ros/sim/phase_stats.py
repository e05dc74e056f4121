"""Where a policy spends its time, measured against the scripted expert's phases.

At every decision the expert labels the state the policy is in (its ``mode`` - for the field
expert ``orbit``, ``blend`` or ``push`` - and its step ``d``). Between two decisions the TCP moves
``delta``; per phase this module reports decisions per episode, the progress along the expert's
direction (``delta . d / |d|``) and the cosine between ``delta`` and ``d``. The expert driving
itself gives the reference row. Pure: no simulator, no ROS.
"""

from collections import defaultdict
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np


class PhaseStats:
    """Accumulate per-phase motion statistics over episodes (``genpolicy-eval --phases``)."""

    def __init__(self, expert: Any) -> None:
        self.expert = expert
        self.episodes = 0
        self._current: List[Tuple[str, np.ndarray, np.ndarray]] = []
        self._rows: Dict[str, List[Tuple[float, float]]] = defaultdict(list)

    def on_decision(self, obs: Mapping[str, Any]) -> None:
        """Label this decision's state with the expert's phase and step."""
        ee = np.asarray(obs['ee_pos'], dtype=float)[:2]
        step = np.asarray(self.expert.act(obs), dtype=float)[:2] - ee
        self._current.append((str(self.expert.mode), ee, step))

    def end_episode(self) -> None:
        """Close an episode: pair each decision with the TCP's motion to the next one."""
        for (mode, ee, step), (_, ee_next, _) in zip(self._current, self._current[1:]):
            norm = float(np.linalg.norm(step))
            if norm < 1e-9:
                continue
            delta = ee_next - ee
            progress = float(delta @ step) / norm
            moved = float(np.linalg.norm(delta))
            self._rows[mode].append((progress, progress / moved if moved > 1e-9 else 0.0))
        self._current = []
        self.expert.reset()
        self.episodes += 1

    def summary(self) -> Dict[str, Dict[str, float]]:
        """Per phase: decisions per episode, mean progress [m] and mean cosine."""
        n = max(self.episodes, 1)
        return {mode: {'decisions_per_episode': len(rows) / n,
                       'progress_m': float(np.mean([r[0] for r in rows])),
                       'cosine': float(np.mean([r[1] for r in rows]))}
                for mode, rows in sorted(self._rows.items())}

    def table(self) -> str:
        """Return the summary as a printable table."""
        lines = [f'{"phase":>8} {"decisions/episode":>18} {"progress mm/decision":>21} '
                 f'{"cosine to expert":>17}']
        for mode, s in self.summary().items():
            lines.append(f'{mode:>8} {s["decisions_per_episode"]:18.1f} '
                         f'{s["progress_m"] * 1e3:21.1f} {s["cosine"]:17.2f}')
        return '\n'.join(lines)
