"""PhaseStats: per-phase decisions, progress and direction against the field expert."""

import numpy as np
import pytest

from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.expert import FieldPushExpert
from genpolicy_ros.sim.phase_stats import PhaseStats


def _expert() -> FieldPushExpert:
    sim = SimConfig.load()
    return FieldPushExpert(sim.expert, sim.task.tcp_push_z_m)


def _obs(ee, cube=(0.5, 0.0), goal=(0.7, 0.0)):
    return {'ee_pos': np.r_[ee, 0.1], 'cube_pose': np.r_[cube, 0.02, 0, 0, 0, 1],
            'goal': np.asarray(goal, float)}


def test_a_tcp_following_the_expert_scores_full_progress_and_cosine_one():
    expert = _expert()
    stats = PhaseStats(_expert())
    ee = np.array([0.5, 0.12])            # beside the cube: orbit, then blend, then push
    for _ in range(12):
        obs = _obs(ee)
        stats.on_decision(obs)
        ee = np.asarray(expert.act(obs))[:2]  # the TCP reaches the expert's target exactly
    stats.end_episode()
    summary = stats.summary()
    assert sum(s['decisions_per_episode'] for s in summary.values()) == 11  # last: no next
    assert 'orbit' in summary
    step = expert.config.max_step_m
    for phase in summary.values():
        assert phase['progress_m'] == pytest.approx(step, rel=1e-6)
        assert phase['cosine'] == pytest.approx(1.0, abs=1e-9)


def test_sideways_and_stalled_motion_score_zero_progress():
    stats = PhaseStats(_expert())
    # Straight behind the cube (push along +x), a step sideways, then standing still.
    for ee in ([0.35, 0.0], [0.35, 0.01], [0.35, 0.01]):
        stats.on_decision(_obs(np.array(ee)))
    stats.end_episode()
    stats.on_decision(_obs(np.array([0.35, 0.0])))
    stats.end_episode()                   # a one-decision episode adds nothing
    push = stats.summary()['push']
    assert stats.episodes == 2
    assert push['decisions_per_episode'] == 1.0   # 2 decisions over 2 episodes
    assert push['progress_m'] == pytest.approx(0.0, abs=1e-9)
    assert push['cosine'] == pytest.approx(0.0, abs=1e-9)  # stalled counts as 0
    assert 'push' in stats.table() and 'cosine' in stats.table()
