"""Closed-loop run of the shipped policy in the PyBullet push task (slow: ~10-30 s)."""

import numpy as np
import pytest

from genpolicy_ros.policy.config import PolicyRuntimeConfig
from genpolicy_ros.policy.policy import FlowPolicy, resolve_checkpoint


@pytest.mark.slow
def test_shipped_policy_runs_closed_loop():
    """Check: one held-out episode runs end to end with finite targets and jerk figures."""
    pytest.importorskip('pybullet')
    from genpolicy_ros.policy.evaluate import evaluate
    from genpolicy_ros.sim.task import EVAL_SEED_START
    rt = PolicyRuntimeConfig.load()
    if not resolve_checkpoint(rt.checkpoint).is_file():
        pytest.skip('no shipped checkpoint')
    policy = FlowPolicy.load(runtime=rt)
    result = evaluate(policy, [EVAL_SEED_START], 'blend', rt)
    assert result['episodes'] == 1 and 0 < result['mean_steps'] <= 1000
    assert np.isfinite(result['chunk_p50_ms']) and result['chunk_p50_ms'] > 0
    assert np.isfinite(result['cmd_jerk_interior_rms'])
