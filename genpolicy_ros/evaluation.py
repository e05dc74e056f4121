"""Lock-step evaluation of the whole stack: policy -> safety filter -> monitor -> PyBullet.

The same cores as the ROS nodes run synchronously on simulated time: the policy plans at the
decision rate (10 Hz), the filter tracks the plan at the control rate (100 Hz), the monitor gates
every command, and PyBullet steps at 1 kHz. Deterministic for a seed, so runs are comparable.

``genpolicy-eval --episodes N --seed S`` prints one line per episode and, as its last line::

    success_rate=<float> violations=<int> mean_intervention=<float, m/s> episodes=<int>

``violations`` counts control steps at which a hard barrier (table, obstacles, joint limits) of
the measured state was below -1e-6, or the commanded EE speed exceeded the cap; it is measured
with the filter on or off (``--no-filter`` runs plain resolved-rate tracking within the joint
velocity limits, for comparison). ``mean_intervention`` is the mean norm of proposed minus
commanded EE linear velocity over control steps.
"""

import argparse
from pathlib import Path
from dataclasses import dataclass, field, replace
import math
import sys
import time
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from genpolicy_ros.drivers.pybullet_backend import PyBulletBackend
from genpolicy_ros.monitor.calibration import load_calibration
from genpolicy_ros.monitor.gate import Mode
from genpolicy_ros.monitor.monitor import load_novelty_model, MonitorConfig, RuntimeMonitor
from genpolicy_ros.paths import config_path
from genpolicy_ros.policy.chunk_plan import DOWN_QUATERNION, ExpertPlanner, FlowPlanner
from genpolicy_ros.policy.config import PolicyRuntimeConfig
from genpolicy_ros.policy.policy import resolve_checkpoint
from genpolicy_ros.robot import FrankaModel
from genpolicy_ros.safety.config import SafetyConfig
from genpolicy_ros.safety.filter import RobotState, SafetyFilter
from genpolicy_ros.safety.reference import ReferenceTracker
from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.episode import observe
from genpolicy_ros.sim.expert import make_expert
from genpolicy_ros.sim.phase_stats import PhaseStats
from genpolicy_ros.sim.task import EVAL_SEED_START
from genpolicy_ros.sim.variants import apply_task_variant, DEFAULT_VARIANT, variant_names
from genpolicy_ros.sim.world import PandaWorld

VIOLATION_TOL = 1e-6
HARD_BARRIER_KINDS = ('table', 'obstacle', 'joint_limit')


@dataclass
class EpisodeStats:
    """What one lock-step episode did."""

    seed: int
    success: bool
    decisions: int
    duration_s: float
    final_distance_m: float
    violations: int
    min_hard_barrier: float
    intervention_mps: List[float] = field(default_factory=list)
    filter_status: Dict[str, int] = field(default_factory=dict)
    scores: List[float] = field(default_factory=list)
    novelty: List[float] = field(default_factory=list)
    modes: List[str] = field(default_factory=list)
    first_slow_or_hold_s: Optional[float] = None
    hold_reason: str = ''

    @property
    def mean_intervention_mps(self) -> float:
        """Mean EE linear velocity removed by the filter [m/s]."""
        return float(np.mean(self.intervention_mps)) if self.intervention_mps else 0.0


class LockstepStack:
    """Build the cores once; run episodes on seeds.

    ``monitor`` is ``'gate'`` (the monitor gates commands with the shipped calibration),
    ``'observe'`` (scores are computed, nothing is gated: for calibration) or ``'off'``.
    ``task_variant`` names a variant of ``config/task_variants.yaml`` (``default``: the task
    of ``sim.yaml``). ``max_decisions`` shortens episodes below the task's time limit;
    ``stop_on_hold`` ends an episode as soon as the monitor latches HOLD (the rest of it is
    a hold). :attr:`episode` is the :class:`EpisodeStats` of the running (or last) episode, so
    a planner can read what the filter and the monitor did while its plan was executed.
    ``novelty_model`` replaces the shipped camera-novelty model (calibration fits a new one).
    ``runtime_overrides`` replaces entries of ``config/policy.yaml`` (e.g. ``flow_steps``).
    """

    def __init__(self, policy: str = 'flow', checkpoint: Optional[str] = None,
                 use_filter: bool = True, monitor: str = 'gate', gui: bool = False,
                 world_hook=None, task_variant: str = DEFAULT_VARIANT,
                 max_decisions: Optional[int] = None, stop_on_hold: bool = False,
                 novelty_model=None, runtime_overrides: Optional[dict] = None) -> None:
        # First: a bad override fails (its __post_init__ checks) before any world exists.
        runtime = replace(PolicyRuntimeConfig.load(), **(runtime_overrides or {}))
        self.sim = apply_task_variant(SimConfig.load(), task_variant)
        self.task_variant = task_variant
        self.max_decisions = max_decisions
        self.stop_on_hold = stop_on_hold
        self.episode: Optional[EpisodeStats] = None
        self.world = PandaWorld(self.sim, gui=gui)
        self.backend = PyBulletBackend(self.world)
        self.model = FrankaModel()
        # Lock-step runs on simulated time, where a QP solve takes no time at all: the filter's
        # wall-clock budget (the node's real-time guard, attacked by the fault suite's CPU
        # starvation test) would make an episode depend on machine load (a solve descheduled
        # past it falls back to a hold), so it is not enforced here.
        self.safety = replace(SafetyConfig.load(), solve_time_budget_s=math.inf)
        self.filter = SafetyFilter(self.model, self.safety)
        self.tracker = ReferenceTracker(self.safety.tracking)
        self.use_filter = use_filter
        self.planner = (FlowPlanner.load(runtime, checkpoint) if policy == 'flow'
                        else ExpertPlanner(runtime))
        self.monitor_mode = monitor
        self.monitor_config = MonitorConfig.load()
        self.calibration = None
        if monitor == 'gate':
            path = config_path(self.monitor_config.calibration_file)
            if not path.is_file():
                raise FileNotFoundError(
                    f'{path} does not exist: run genpolicy-calibrate first, or evaluate with '
                    '--monitor observe|off')
            self.calibration = load_calibration(path)
            if policy == 'flow':
                _warn_if_calibrated_for_another(self.calibration.policy_checkpoint,
                                                checkpoint or runtime.checkpoint)
        # ``novelty_model`` given: the one being calibrated (the shipped file may be older).
        if novelty_model is None and monitor != 'off':
            novelty_model = load_novelty_model(self.monitor_config)
        self.novelty_model = novelty_model if monitor != 'off' else None
        self.control_dt = 1.0 / self.sim.control_hz
        self.control_per_decision = int(round(self.sim.control_hz / self.sim.decision_hz))
        self.world_hook = world_hook
        self.decision_hook: Optional[Callable[[dict], None]] = None  # obs of each decision
        self.frames: List[np.ndarray] = []

    def _new_monitor(self) -> Optional[RuntimeMonitor]:
        if self.monitor_mode == 'off':
            return None
        cfg = self.monitor_config
        if self.monitor_mode == 'observe':
            # Score everything, gate nothing: the calibration run itself.
            cfg = replace(cfg, require_calibration=False)
        return RuntimeMonitor(cfg, self.model.limits.velocity, self.model.limits.acceleration,
                              self.calibration, self.novelty_model)

    def _unfiltered(self, state: RobotState) -> tuple:
        """Plain resolved-rate tracking within the joint velocity limits (``--no-filter``)."""
        kin = self.model.kinematics(state.q)
        twist = self.tracker.desired_twist(state.stamp, kin.ee_pos, kin.ee_rot)
        if twist is None:
            twist = np.zeros(6)
        jac = kin.ee_jac
        damping = 1e-4
        dq = jac.T @ np.linalg.solve(jac @ jac.T + damping * np.eye(6), twist)
        v_max = self.model.limits.velocity
        dq *= min(1.0, float(np.min(v_max / np.maximum(np.abs(dq), 1e-12))))
        return state.q + self.control_dt * dq, dq, twist, jac @ dq

    def run_episode(self, seed: int, record_video: bool = False) -> EpisodeStats:
        """Run one push episode on task ``seed`` until success or the time limit."""
        world, backend = self.world, self.backend
        spec = world.reset(seed)
        backend.reset_watchdog()
        self.planner.reset(seed)
        self.filter.reset()
        self.tracker.clear()
        monitor = self._new_monitor()
        if self.world_hook is not None:
            self.world_hook.on_reset(world, seed)
        stats = EpisodeStats(seed, False, 0, 0.0, 0.0, 0, np.inf)
        self.episode = stats
        max_steps = world.task.max_decision_steps(self.sim.decision_hz)
        if self.max_decisions is not None:
            max_steps = min(max_steps, int(self.max_decisions))
        cap = self.safety.speed_cap.max_speed_mps
        for step in range(max_steps):
            if self.world_hook is not None:
                self.world_hook.on_step(world, step)
            obs = observe(backend, step)
            t = float(obs['time_s'])
            obs['stamp'] = t
            if record_video:
                self.frames.append(obs['image'])
            if world.task.is_success(obs['cube_pose'][:2], spec.goal_xy):
                stats.success = True
                break
            if obs['cube_pose'][2] < 0.0:
                break  # cube fell off the table
            if self.decision_hook is not None:
                self.decision_hook(obs)
            plan = self.planner.plan(obs)
            stats.decisions += 1
            self.tracker.set_chunk_arrays(plan.stamp_s, plan.times_from_start_s, plan.positions,
                                          np.tile(DOWN_QUATERNION, (len(plan.positions), 1)))
            if monitor is not None:
                monitor.on_camera(t, t, obs['image'])
                if monitor.camera_checks.last_distance is not None:
                    stats.novelty.append(monitor.camera_checks.last_distance)
                if plan.samples is not None:
                    score = monitor.on_chunk_samples(plan.stamp_s, plan.sample_times_s,
                                                     plan.samples, t)
                    if score is not None:
                        stats.scores.append(float(score.score))
            for _ in range(self.control_per_decision):
                self._control_step(stats, monitor, cap)
            if monitor is not None:
                mode = monitor.mode
                stats.modes.append(mode.name)
                if mode != Mode.NOMINAL and stats.first_slow_or_hold_s is None:
                    stats.first_slow_or_hold_s = t
                if mode == Mode.HOLD and not stats.hold_reason:
                    stats.hold_reason = monitor.status(t).reason
                if mode == Mode.HOLD and self.stop_on_hold:
                    break
        cube_xy = world.cube_pose()[:2]
        stats.success = stats.success or world.task.is_success(cube_xy, spec.goal_xy)
        stats.final_distance_m = world.task.distance_to_goal(cube_xy, spec.goal_xy)
        stats.duration_s = world.sim_time
        return stats

    def _control_step(self, stats: EpisodeStats, monitor: Optional[RuntimeMonitor],
                      cap: float) -> None:
        arm = self.backend.read_state()
        t = float(arm.stamp)
        state = RobotState(q=arm.q, dq=arm.dq, stamp=t)
        if self.use_filter:
            res = self.filter.step_tracking(state, self.tracker, t)
            q_cmd, dq_cmd = res.q_cmd, res.dq_cmd
            proposed, safe = res.proposed_twist, res.safe_twist
            stats.filter_status[res.status.name] = stats.filter_status.get(res.status.name, 0) + 1
            fallback = res.status.is_fallback
        else:
            q_cmd, dq_cmd, proposed, safe = self._unfiltered(state)
            fallback = False
        stats.intervention_mps.append(float(np.linalg.norm(proposed[:3] - safe[:3])))
        if monitor is not None:
            monitor.on_joint_state(arm.q, arm.dq, t, t)
            monitor.on_safe_command(q_cmd, dq_cmd, t, fallback, t)
            if self.monitor_mode == 'gate':
                q_cmd, dq_cmd, _ = monitor.gated_command(arm.q, arm.dq, t)
            else:
                monitor.update(t)
        sent_speed = float(np.linalg.norm(self.model.ee_jacobian(arm.q)[:3] @ dq_cmd))
        self.backend.command(q_cmd, dq_cmd)
        self.backend.advance(self.control_dt)
        q_new = self.backend.read_state().q
        hard = [v for k, v in self.filter.barriers.true_values(q_new).items()
                if k.split(':')[0] in HARD_BARRIER_KINDS]
        worst = float(min(hard))
        stats.min_hard_barrier = min(stats.min_hard_barrier, worst)
        if worst < -VIOLATION_TOL or sent_speed > cap + VIOLATION_TOL:
            stats.violations += 1

    def close(self) -> None:
        """Release the simulator."""
        self.backend.close()
        self.world.close()


def write_video(frames: List[np.ndarray], path: str, fps: float, scale: int = 4) -> None:
    """Write RGB frames as an MP4 (OpenCV), nearest-neighbour upscaled for viewing."""
    import cv2
    if not frames:
        raise ValueError('no frames to write')
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), fps, (w * scale, h * scale))
    try:
        for f in frames:
            big = cv2.resize(f, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
            writer.write(cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def summary_line(results: List[EpisodeStats]) -> str:
    """Return the machine-readable last line."""
    n = len(results)
    success = sum(r.success for r in results) / n if n else 0.0
    violations = sum(r.violations for r in results)
    steps = [x for r in results for x in r.intervention_mps]
    mean_int = float(np.mean(steps)) if steps else 0.0
    return (f'success_rate={success:.4f} violations={violations} '
            f'mean_intervention={mean_int:.6f} episodes={n}')


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple:
    """95% Wilson score interval of a success rate ``k / n``."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: List[float], z: float = 1.96) -> tuple:
    """Return the mean of ``values`` and its normal-approximation 95% interval (mean, lo, hi)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return 0.0, 0.0, 0.0
    half = z * float(x.std(ddof=1)) / float(np.sqrt(len(x))) if len(x) > 1 else 0.0
    return float(x.mean()), float(x.mean()) - half, float(x.mean()) + half


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='genpolicy-eval', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--episodes', type=int, default=50)
    p.add_argument('--seed', type=int, default=EVAL_SEED_START,
                   help='first seed (>= 100000 are held out from training)')
    p.add_argument('--policy', choices=('flow', 'expert'), default='flow')
    p.add_argument('--checkpoint', default=None, help='policy checkpoint (default: shipped)')
    p.add_argument('--task', default=DEFAULT_VARIANT, choices=variant_names(),
                   help='task variant (config/task_variants.yaml); hard: 1.5 cm success radius')
    p.add_argument('--no-filter', action='store_true',
                   help='plain resolved-rate tracking instead of the CBF-QP filter')
    p.add_argument('--monitor', choices=('gate', 'observe', 'off'), default='gate',
                   help='gate commands (needs config/monitor_calibration.yaml), only score, '
                        'or skip the monitor')
    p.add_argument('--video', default=None, help='write an MP4 of the first episode here')
    p.add_argument('--flow-steps', type=int, default=None,
                   help='Euler steps K per chunk (default: flow_steps of config/policy.yaml)')
    p.add_argument('--samples', type=int, default=None,
                   help='chunks sampled per decision N (default: n_samples of policy.yaml)')
    p.add_argument('--phases', action='store_true',
                   help='also print decisions, progress and direction per phase of the scripted '
                        'expert at the visited states (where the time goes)')
    p.add_argument('--threads', type=int, default=1, help='torch threads')
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of ``genpolicy-eval``."""
    args = _parse(argv)
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    overrides = {k: v for k, v in (('flow_steps', args.flow_steps),
                                   ('n_samples', args.samples)) if v is not None}
    stack = LockstepStack(args.policy, args.checkpoint, not args.no_filter, args.monitor,
                          task_variant=args.task, runtime_overrides=overrides)
    phases = None
    if args.phases:
        phases = PhaseStats(make_expert(stack.sim.expert, stack.sim.task.tcp_push_z_m))
        stack.decision_hook = phases.on_decision
    results: List[EpisodeStats] = []
    t0 = time.monotonic()
    try:
        for i in range(args.episodes):
            seed = args.seed + i
            r = stack.run_episode(seed, record_video=bool(args.video) and i == 0)
            results.append(r)
            if phases is not None:
                phases.end_episode()
            modes = sorted(set(r.modes)) if r.modes else ['-']
            print(f'episode {i:3d} seed {seed}: {"success" if r.success else "FAILURE"} '
                  f'decisions={r.decisions:3d} dist={r.final_distance_m * 100:5.1f} cm '
                  f'violations={r.violations} min_barrier={r.min_hard_barrier:+.4f} '
                  f'intervention={r.mean_intervention_mps:.4f} m/s modes={"/".join(modes)}'
                  + (f' hold: {r.hold_reason}' if r.hold_reason else ''), flush=True)
            if args.video and i == 0:
                write_video(stack.frames, args.video, stack.sim.decision_hz)
                print(f'video: {args.video}', flush=True)
    finally:
        stack.close()
    k = sum(r.success for r in results)
    lo, hi = wilson_interval(k, len(results))
    print(f'{k}/{len(results)} successes (95% CI {lo:.2f}-{hi:.2f}), '
          f'{time.monotonic() - t0:.0f} s wall', flush=True)
    if results:
        m, m_lo, m_hi = mean_interval([r.mean_intervention_mps for r in results])
        print(f'intervention per episode {m:.4f} m/s (95% CI {m_lo:.4f}-{m_hi:.4f}, '
              f'normal approximation over episodes)', flush=True)
    if phases is not None:
        print(phases.table(), flush=True)
    print(summary_line(results), flush=True)
    sys.exit(0)


def _warn_if_calibrated_for_another(calibrated: str, gated: str) -> None:
    """Warn when the monitor gates a policy its thresholds were not calibrated on.

    The consistency threshold is a quantile of the calibrated policy's own sample spread;
    another policy's spread (and its false-alarm rate) can differ.
    """
    if resolve_checkpoint(calibrated).resolve() != resolve_checkpoint(gated).resolve():
        warnings.warn(f'the monitor was calibrated for {calibrated}, not {gated}: its '
                      'thresholds may not hold (genpolicy-calibrate --checkpoint, or '
                      '--monitor observe|off)', stacklevel=3)


# Calibration episodes use their own seed range: never training (< 100000) nor evaluation.
CALIBRATION_SEED_START = 200000


def demo_episodes(demo_dirs: List[str], max_episodes: int
                  ) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(frames (T, H, W, 3) uint8, joint positions (T, 7), cube xy (T, 2))`` per episode.

    The first ``max_episodes`` episodes of each demo directory, read one at a time.
    """
    from genpolicy_ros.policy.dataset import episode_files
    for d in demo_dirs:
        files = episode_files(d)[:max_episodes]
        if not files:
            raise FileNotFoundError(f'no episode_*.npz in {d}: the novelty model is fitted on '
                                    f'the policy\'s training demos (--feature-demos)')
        for f in files:
            with np.load(f) as ep:
                yield (np.asarray(ep['images'], dtype=np.uint8),
                       np.asarray(ep['q'], dtype=float),
                       np.asarray(ep['cube_pose'][:, :2], dtype=float))


def calibrate_main(argv: Optional[List[str]] = None) -> None:
    """Entry point of ``genpolicy-calibrate``: nominal episodes -> monitor thresholds.

    Writes the novelty model (training-feature statistics of the policy encoder, fitted on
    its demos) and the calibration YAML (conformal thresholds of the consistency score and of
    the novelty run statistic, each at alpha / 2).
    """
    from genpolicy_ros.monitor.calibration import calibrate, min_episodes, save_calibration
    from genpolicy_ros.monitor.novelty import FEATURE_DEFINITION, FeatureNoveltyModel, \
        run_statistic
    p = argparse.ArgumentParser(
        prog='genpolicy-calibrate', formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description='Fit the camera-novelty model on the training demos, run nominal lock-step '
                    'episodes with the monitor observing, and write the split-conformal '
                    'thresholds of its consistency score and camera novelty.')
    p.add_argument('--episodes', type=int, default=40)
    p.add_argument('--seed', type=int, default=CALIBRATION_SEED_START)
    p.add_argument('--alpha', type=float, default=0.05,
                   help='target false-positive rate (alpha / 2 per alarm channel)')
    p.add_argument('--checkpoint', default=None, help='policy checkpoint (default: shipped)')
    p.add_argument('--feature-demos', nargs='+', default=['data/demos/push_v1'],
                   help='demo directories the policy was trained on (novelty model fit)')
    p.add_argument('--feature-episodes', type=int, default=300,
                   help='episodes per demo directory used for the fit')
    p.add_argument('--shrinkage', type=float, default=0.05,
                   help='covariance shrinkage toward a scaled identity, in [0, 1)')
    p.add_argument('--out', default=None,
                   help='output file (default: config/<calibration_file of monitor.yaml>)')
    p.add_argument('--threads', type=int, default=1, help='torch threads')
    args = p.parse_args(argv)
    need = min_episodes(args.alpha / 2.0)
    if args.episodes < need:
        p.error(f'alpha={args.alpha} (alpha/2 per channel) needs at least {need} nominal '
                f'episodes (finite-sample conformal rule), got {args.episodes}')
    import torch
    torch.set_num_threads(args.threads)
    from tqdm import tqdm
    checkpoint = args.checkpoint or PolicyRuntimeConfig.load().checkpoint
    model = FeatureNoveltyModel.fit(str(checkpoint),
                                    demo_episodes(args.feature_demos, args.feature_episodes),
                                    args.shrinkage)
    stack = LockstepStack('flow', args.checkpoint, use_filter=True, monitor='observe',
                          novelty_model=model)
    k = stack.monitor_config.novelty.hold_consecutive_frames
    scores: List[List[float]] = []
    novelty: List[float] = []
    try:
        for i in tqdm(range(args.episodes), desc='calibration episodes', unit='ep'):
            r = stack.run_episode(args.seed + i)
            scores.append(r.scores)
            novelty.append(run_statistic(r.novelty, k))
            tqdm.write(f'seed {args.seed + i}: {"success" if r.success else "failure"}, '
                       f'max score {max(r.scores) if r.scores else float("nan"):.4f}, '
                       f'novelty statistic {novelty[-1]:.4f}')
    finally:
        stack.close()
    out = Path(args.out) if args.out else config_path(stack.monitor_config.calibration_file)
    novelty_file = stack.monitor_config.novelty.model_file
    model.save(out.parent / novelty_file)
    cal = calibrate(scores, args.alpha, str(checkpoint),
                    stack.monitor_config.consistency.definition(), novelty, FEATURE_DEFINITION,
                    novelty_file)
    path = save_calibration(cal, out)
    print(f'novelty model: {model.n_fit} demo frames -> {out.parent / novelty_file}')
    print(f'threshold={cal.threshold:.6f} novelty_threshold={cal.novelty_threshold:.6f} '
          f'alpha={cal.alpha} n={cal.n_episodes} -> {path}')
