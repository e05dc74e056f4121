"""Rewrite every episode of a recorded demo set into a new set, resumably and in parallel.

Shared by ``genpolicy-rerender-demos`` (new camera frames) and ``genpolicy-relabel-demos``
(new expert labels): episode files already in the destination are kept, so an interrupted run
resumes; a finished set (all episodes and ``meta.json`` present) is left as it is.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm


def load_episode(path: str) -> Dict[str, np.ndarray]:
    """Return every array of one ``episode_*.npz`` file."""
    with np.load(path) as ep:
        return {k: ep[k] for k in ep.files}


def save_episode(data: Dict[str, np.ndarray], path: str) -> None:
    """Write an episode atomically (a killed run never leaves a half-written file)."""
    tmp = path + '.tmp.npz'
    np.savez_compressed(tmp, **data)
    os.replace(tmp, path)


def rewrite_set(src: Path, dst: Path, worker: Callable[[Tuple[str, str]], Any], jobs: int,
                initializer: Optional[Callable[[], None]], desc: str
                ) -> Optional[Tuple[int, List[Any], float]]:
    """Run ``worker((src_file, dst_file))`` on every episode of ``src`` missing from ``dst``.

    Returns ``(episodes in src, worker results of this run, seconds)``, or None when ``dst``
    was complete before (nothing done). Workers run in ``jobs`` spawned processes.
    """
    files = sorted(Path(src).glob('episode_*.npz'))
    if not files:
        raise FileNotFoundError(f'{src} has no episode_*.npz files')
    dst.mkdir(parents=True, exist_ok=True)
    todo = [(str(f), str(dst / f.name)) for f in files if not (dst / f.name).is_file()]
    if not todo and (dst / 'meta.json').is_file():
        return None
    t0 = time.monotonic()
    ctx = mp.get_context('spawn')
    with ctx.Pool(max(1, int(jobs)), initializer=initializer) as pool:
        results = list(tqdm(pool.imap_unordered(worker, todo), total=len(todo), desc=desc,
                            unit='ep'))
    return len(files), results, time.monotonic() - t0


def write_meta(src: Path, dst: Path, updates: Dict[str, Any]) -> Dict[str, Any]:
    """Write ``dst/meta.json``: the source's meta with ``updates`` applied; return it."""
    meta = json.loads((src / 'meta.json').read_text()) if (src / 'meta.json').is_file() else {}
    meta.update(updates)
    (dst / 'meta.json').write_text(json.dumps(meta, indent=1, default=str))
    return meta


def read_meta(dst: Path) -> Dict[str, Any]:
    """Return ``dst/meta.json``."""
    return json.loads((dst / 'meta.json').read_text())
