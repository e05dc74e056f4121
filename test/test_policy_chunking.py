"""Tests of chunk execution: scheduler replanning, boundary smoothing, jerk, frame history."""

from typing import List, Optional

import numpy as np
import pytest

from genpolicy_ros.policy.chunking import (ActionChunk, boundary_jerk, ChunkScheduler,
                                           FrameHistory)

H, N_EXEC, DT = 16, 8, 0.1


class _RampAgent:
    """Chunks along x at 1 cm/step from the observed EE x, with a fixed bias per chunk.

    The bias alternates sign, so consecutive chunks disagree by 2 * bias where they overlap:
    an unsmoothed switch produces a step in the targets.
    """

    def __init__(self, bias: float) -> None:
        self.bias = bias
        self.calls: List[float] = []
        self.seed: Optional[int] = None

    def reset(self, seed: Optional[int] = None) -> None:
        self.seed = seed
        self.calls = []

    def act(self, obs):
        x0 = float(obs['ee_pos'][0])
        self.calls.append(x0)
        b = self.bias * (-1) ** len(self.calls)
        pos = np.zeros((H, 3))
        pos[:, 0] = x0 + 0.01 * np.arange(1, H + 1) + b
        return ActionChunk(pos, np.arange(H) * DT, pos[None].copy(), stamp=0.0)


def _rollout(smoothing: str, steps: int = 40, bias: float = 0.01):
    """Run the scheduler with a perfect tracker; return (targets, scheduler, agent)."""
    agent = _RampAgent(bias)
    sched = ChunkScheduler(agent, N_EXEC, smoothing, blend_steps=4, ensemble_decay=0.1)
    sched.reset(seed=4)
    ee = np.zeros(3)
    out = []
    for _ in range(steps):
        target = sched.step({'ee_pos': ee})
        out.append(target)
        ee = target  # a perfect tracker
    return np.array(out), sched, agent


def test_scheduler_replans_every_n_action_steps():
    """Check: scheduler replans every n action steps."""
    targets, sched, agent = _rollout('none', steps=40)
    assert agent.seed == 4
    assert len(agent.calls) == 5 and sched.boundaries == [8, 16, 24, 32]
    # 'none' executes exactly the chunk's first n_action_steps positions
    first = 0.01 * np.arange(1, 9) - 0.01
    assert np.allclose(targets[:8, 0], first)


def test_scheduler_needs_chunk_flag_and_queue_reset():
    """Check: scheduler needs chunk flag and queue reset."""
    agent = _RampAgent(0.0)
    sched = ChunkScheduler(agent, 4, 'none', 2, 0.1)
    assert sched.needs_chunk()
    sched.step({'ee_pos': np.zeros(3)})
    assert sched.replanned and not sched.needs_chunk()
    for _ in range(3):
        sched.step({'ee_pos': np.zeros(3)})
        assert not sched.replanned
    assert sched.needs_chunk()
    sched.reset_queue()
    assert sched.needs_chunk() and sched.boundaries == []


@pytest.mark.parametrize('mode', ['blend', 'ensemble'])
def test_smoothing_reduces_boundary_jerk(mode):
    """Check: smoothing reduces boundary jerk."""
    raw, sched_raw, _ = _rollout('none')
    smooth, sched, _ = _rollout(mode)
    j_raw = boundary_jerk(raw, DT, sched_raw.boundaries)
    j_smooth = boundary_jerk(smooth, DT, sched.boundaries)
    assert j_raw.boundary_max > 10 * j_raw.interior_max + 1.0  # the jump is visible
    assert j_smooth.boundary_max < 0.7 * j_raw.boundary_max
    # both end up moving at the commanded 1 cm/step
    assert np.allclose(np.diff(smooth[-4:, 0]), 0.01, atol=5e-3)


@pytest.mark.parametrize('mode', ['none', 'blend', 'ensemble'])
def test_preview_matches_the_coming_steps(mode):
    """Check: preview() lists exactly the targets step() then returns until the next replan."""
    agent = _RampAgent(0.02)
    sched = ChunkScheduler(agent, N_EXEC, mode, blend_steps=4, ensemble_decay=0.1)
    obs = {'ee_pos': np.zeros(3)}
    assert sched.preview().shape == (0, 3)
    for _ in range(9):  # into the second chunk: the blend with the first is in progress
        sched.step(obs)
    preview = sched.preview()
    assert preview.shape == (H - 1, 3)
    executed = [sched.step(obs) for _ in range(N_EXEC - 1)]  # up to the next replan
    assert np.allclose(preview[:N_EXEC - 1], executed)


def test_blend_first_step_weights():
    """Check: blend first step weights."""
    agent = _RampAgent(0.05)
    sched = ChunkScheduler(agent, N_EXEC, 'blend', blend_steps=4, ensemble_decay=0.1)
    ee = np.zeros(3)
    targets = [sched.step({'ee_pos': ee}) for _ in range(9)]
    old = -0.05 + 0.01 * 9          # old chunk's prediction for step 8
    new = 0.05 + 0.01 * 1           # new chunk (observed ee x = 0) at its first step
    w_old = 1 - 1 / 5
    assert np.isclose(targets[8][0], w_old * old + (1 - w_old) * new)


def test_boundary_jerk_of_a_cubic():
    """Check: boundary jerk of a cubic."""
    t = np.arange(20) * DT
    x = np.stack([2.0 * t ** 3, np.zeros_like(t), np.zeros_like(t)], axis=1)
    stats = boundary_jerk(x, DT, [10])
    assert np.isclose(stats.boundary_max, 12.0) and np.isclose(stats.interior_rms, 12.0)
    with pytest.raises(ValueError):
        boundary_jerk(x[:3], DT, [])


def test_frame_history_pads_with_first_frame():
    """Check: frame history pads with first frame."""
    hist = FrameHistory(2)
    a, b, c = (np.full((4, 4, 3), v, np.uint8) for v in (1, 2, 3))
    w = hist.push(a)
    assert w.shape == (2, 4, 4, 3) and (w == 1).all()
    w = hist.push(b)
    assert (w[0] == 1).all() and (w[1] == 2).all()
    w = hist.push(c)
    assert (w[0] == 2).all() and (w[1] == 3).all()
    hist.reset()
    assert (hist.push(c) == 3).all()


def test_action_chunk_shape_check():
    """Check: action chunk shape check."""
    with pytest.raises(ValueError):
        ActionChunk(np.zeros((16, 2)), np.zeros(16), np.zeros((1, 16, 2)), 0.0)
