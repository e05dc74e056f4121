"""genpolicy-monitor-eval: the OOD hooks really change the world; the report keeps its format."""

import re

import numpy as np
import pytest

from genpolicy_ros.monitor_eval import (main, Outcome, restore_nominal, ScenarioHook, scenarios,
                                        summary_line)
from genpolicy_ros.sim.world import PandaWorld

LAST_LINE = re.compile(r'^tpr=(\S+) fpr=(\S+) detection_latency_s=(\S+)$')
SEED = 100000


@pytest.fixture(scope='module')
def world():
    w = PandaWorld(gui=False)
    yield w
    w.close()


def _reset(world, seed=SEED):
    world.reset(seed)
    restore_nominal(world)
    return world.render()


@pytest.mark.parametrize('name', ['cube_color', 'camera_shift', 'lighting'])
def test_appearance_hooks_change_the_image_and_reset_restores_it(world, name):
    nominal = _reset(world)
    hook = ScenarioHook(scenarios()[name])
    world.reset(SEED)
    hook.on_reset(world, SEED)
    assert hook.onset_s == 0.0
    changed = world.render()
    moved = (np.abs(changed.astype(int) - nominal).max(axis=2) > 30).sum()
    assert moved > 20, (name, moved)
    again = _reset(world)
    np.testing.assert_array_equal(again, nominal)


def test_cube_size_hook_and_restore(world):
    _reset(world)
    hook = ScenarioHook(scenarios()['cube_size'])
    world.reset(SEED)
    hook.on_reset(world, SEED)
    assert world.cube_size == pytest.approx(0.075)
    assert world.cube_pose()[2] == pytest.approx(0.0375, abs=1e-6)
    _reset(world)
    assert world.cube_size == pytest.approx(world.config.cube.size_m)


def test_displacement_moves_the_cube_at_the_onset_step_only(world):
    _reset(world)
    hook = ScenarioHook(scenarios(onset_step=3)['cube_displaced'])
    hook.on_reset(world, SEED)
    before = world.cube_pose()
    hook.on_step(world, 2)
    np.testing.assert_allclose(world.cube_pose(), before)
    assert hook.onset_s is None
    hook.on_step(world, 3)
    after = world.cube_pose()
    assert hook.onset_s == world.sim_time
    assert np.linalg.norm(after[:2] - before[:2]) > 0.05
    assert after[2] == pytest.approx(before[2])
    assert np.linalg.norm(after[:2] - world.ee_pose()[0][:2]) > 0.07


def test_occlusion_and_frozen_frame_patch_the_camera_until_reset(world):
    nominal = _reset(world)
    hook = ScenarioHook(scenarios(onset_step=1)['camera_occlusion'])
    hook.on_reset(world, SEED)
    hook.on_step(world, 1)
    occluded = world.render()
    assert (occluded.sum(axis=2) == 0).sum() > 500
    assert (nominal.sum(axis=2) == 0).sum() < 50
    np.testing.assert_array_equal(_reset(world), nominal)

    hook = ScenarioHook(scenarios(onset_step=1)['frozen_frame'])
    hook.on_reset(world, SEED)
    hook.on_step(world, 1)
    frozen = world.render()
    scenarios()['cube_displaced'].apply(world)   # the scene changes, the image does not
    np.testing.assert_array_equal(world.render(), frozen)
    restore_nominal(world)
    assert not np.array_equal(world.render(), frozen)


def test_outcome_rules():
    alarm = (2.0, 'SLOW', 'consistency score 5 above slow threshold 3')
    late = Outcome('frozen_frame', 1, False, 0, 15.0, None, 1.5, [alarm], last_frame_s=14.9)
    assert late.detection() == alarm and late.latency_s == pytest.approx(0.5)
    assert not late.pre_onset_alarm and late.adverse and late.detected_before_adverse
    early = Outcome('frozen_frame', 2, True, 0, 6.0, None, 2.5, [alarm], last_frame_s=5.9)
    assert early.detection() is None and early.pre_onset_alarm and not early.adverse
    after_violation = Outcome('lighting', 3, True, 4, 6.0, 1.0, 0.0, [alarm], last_frame_s=5.9)
    assert after_violation.detection() == alarm and not after_violation.detected_before_adverse
    fp = Outcome('nominal', 4, True, 0, 6.0, None, None, [alarm])
    quiet = Outcome('nominal', 5, True, 0, 6.0, None, None, [])
    # Solved by the onset: the condition began, but the monitor never saw a frame of it.
    unseen = Outcome('frozen_frame', 6, True, 0, 1.5, None, 1.5, [], last_frame_s=1.4)
    assert not unseen.exposed and late.exposed
    ood = {'frozen_frame': [late, early, unseen], 'lighting': [after_violation]}
    line = summary_line([fp, quiet], ood)
    m = LAST_LINE.match(line)
    assert m, line
    assert float(m.group(1)) == pytest.approx(2 / 3, abs=1e-4)
    assert float(m.group(2)) == pytest.approx(0.5)
    assert float(m.group(3)) == pytest.approx(1.25)


def test_smoke_run_prints_the_table_and_the_contract_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(['--nominal', '1', '--episodes-per-scenario', '1', '--max-decisions', '6',
              '--onset-step', '2', '--scenarios', 'camera_shift,frozen_frame'])
    assert exc.value.code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    m = LAST_LINE.match(lines[-1])
    assert m, lines[-1]
    assert 0.0 <= float(m.group(1)) <= 1.0 and 0.0 <= float(m.group(2)) <= 1.0
    latency = float(m.group(3))
    assert np.isnan(latency) or latency >= 0.0
    text = '\n'.join(lines)
    for row in ('nominal (FPR)', 'camera_shift', 'frozen_frame'):
        assert re.search(rf'^{re.escape(row)} ', text, re.M), text


@pytest.mark.slow
def test_full_scenario_set_runs():
    with pytest.raises(SystemExit) as exc:
        main(['--nominal', '3', '--episodes-per-scenario', '1'])
    assert exc.value.code == 0


def test_table_reports_chance_level_from_the_nominal_twin():
    from genpolicy_ros.monitor_eval import table
    slow = (3.0, 'SLOW', 'consistency score 4 above slow threshold 3.3')
    hold = (3.1, 'HOLD', 'consistency score 5 above threshold 4.1 for 2 consecutive decision(s)')
    twin = Outcome('nominal', 7, False, 0, 15.0, None, None, [slow], last_frame_s=14.9)
    ood = Outcome('frozen_frame', 7, False, 0, 15.0, None, 1.5, [slow, hold], [(3.0, 5.0)],
                  last_frame_s=14.9)
    lines = table([twin], {'frozen_frame': [ood]}, scenarios(), 10.0, 4.0)
    row = next(line for line in lines if line.startswith('frozen_frame')).split()
    # scenario onset eps exp TPR TPR0 TPR_H lat_s pre det<bad success viol max/thr via
    assert row[4:9] == ['1.000', '1.000', '1.000', '1.50', '0']
    assert row[9] == '1/1' and row[12] == '1.25' and row[13] == 'score->SLOW:1'
    nominal_row = next(line for line in lines if line.startswith('nominal')).split()
    assert nominal_row[5] == '1.000'
