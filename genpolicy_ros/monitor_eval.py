"""Out-of-distribution detection evaluation of the runtime monitor (``genpolicy-monitor-eval``).

The whole stack runs lock-step (:class:`genpolicy_ros.evaluation.LockstepStack`) with the
monitor gating commands with the shipped calibration. Held-out nominal episodes (seeds from
:data:`genpolicy_ros.sim.task.EVAL_SEED_START`) give the false-positive rate; the same seeds run
again under each out-of-distribution (OOD) scenario, injected by a world hook at an onset: at
reset (unseen cube colour or size, camera pose shift, lighting change) or mid-episode at a
decision step (cube displaced, camera occlusion, frozen camera frame).

An *alarm* is the gate leaving NOMINAL (a transition to SLOW or HOLD, or never leaving the
start-up HOLD). An OOD episode counts as detected when an alarm is raised at or after the onset;
its latency is the alarm time minus the onset time (simulated seconds). A nominal episode with
any alarm is a false positive. OOD episodes whose monitor saw no camera frame at or after the
onset (a mid-episode scenario on a task solved by then) saw no OOD input and are left out of
the rates.

One table row per scenario, then as the last line::

    tpr=<float> fpr=<float> detection_latency_s=<median>

``tpr`` is pooled over all exposed OOD episodes, ``fpr`` is over the nominal episodes and
``detection_latency_s`` is the median over detected OOD episodes (``nan`` if none).
"""

import argparse
from dataclasses import dataclass, field, replace
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pybullet as pb

from genpolicy_ros.evaluation import LockstepStack
from genpolicy_ros.monitor.gate import Mode
from genpolicy_ros.sim.task import EVAL_SEED_START
from genpolicy_ros.sim.world import PandaWorld

# Parameters of the OOD conditions (none of them occurs in the training demonstrations).
UNSEEN_CUBE_RGBA = (0.15, 0.35, 0.9, 1.0)          # blue instead of red
UNSEEN_CUBE_SIZE_M = 0.075                          # 7.5 cm instead of 5 cm
CAMERA_EYE_SHIFT_M = (-0.05, 0.12, 0.08)            # added to the nominal eye position
CAMERA_TARGET_SHIFT_M = (0.0, 0.04, 0.0)            # added to the nominal target point
LIGHT = dict(direction=(-0.6, -0.5, 0.6), color_rgb=(1.0, 0.7, 0.45), ambient=0.3,
             diffuse=0.8, specular=0.2)
DISPLACEMENT_M = 0.08                               # sideways jump of the cube at the onset
DISPLACEMENT_EE_CLEARANCE_M = 0.08                  # never drop the cube onto the fingers
OCCLUSION_HALF_PX = 18                              # black square centred on the cube's pixel
DEFAULT_ONSET_STEP = 15                             # decision step of mid-episode onsets


def restore_nominal(world: PandaWorld) -> None:
    """Put every appearance / camera setting of ``world`` back to ``config/sim.yaml``."""
    cam = world.config.camera
    world.set_camera_pose(cam.eye_m, cam.target_m, cam.up)
    world.set_light(direction=cam.light_direction, color_rgb=cam.light_color_rgb,
                    ambient=cam.light_ambient, diffuse=cam.light_diffuse,
                    specular=cam.light_specular, shadows=cam.shadows)
    world.set_cube_color(world.config.cube.rgba)
    if abs(world.cube_size - world.config.cube.size_m) > 1e-12:
        world.set_cube_size(world.config.cube.size_m)
    world.__dict__.pop('render', None)  # drop a camera fault patched over the method


def _cube_color(world: PandaWorld) -> None:
    world.set_cube_color(UNSEEN_CUBE_RGBA)


def _cube_size(world: PandaWorld) -> None:
    world.set_cube_size(UNSEEN_CUBE_SIZE_M)


def _camera_shift(world: PandaWorld) -> None:
    cam = world.config.camera
    world.set_camera_pose(np.add(cam.eye_m, CAMERA_EYE_SHIFT_M),
                          np.add(cam.target_m, CAMERA_TARGET_SHIFT_M), cam.up)


def _lighting(world: PandaWorld) -> None:
    world.set_light(**LIGHT)


def _displace_cube(world: PandaWorld) -> None:
    """Move the cube sideways (across its line to the goal) by ``DISPLACEMENT_M``."""
    pose = world.cube_pose()
    xy = pose[:2]
    to_goal = np.asarray(world.goal_xy) - xy
    norm = float(np.linalg.norm(to_goal))
    along = to_goal / norm if norm > 1e-9 else np.array([1.0, 0.0])
    side = np.array([-along[1], along[0]])
    tcfg = world.config.task
    lo = np.array([tcfg.workspace_x_m[0], tcfg.workspace_y_m[0]])
    hi = np.array([tcfg.workspace_x_m[1], tcfg.workspace_y_m[1]])
    ee_xy = world.ee_pose()[0][:2]
    candidates = [np.clip(xy + s * DISPLACEMENT_M * side, lo, hi) for s in (1.0, -1.0)]
    candidates += [np.clip(xy + s * DISPLACEMENT_M * along, lo, hi) for s in (1.0, -1.0)]
    # The first candidate that really moves the cube and keeps clear of the fingers.
    scored = [(np.linalg.norm(c - ee_xy) < DISPLACEMENT_EE_CLEARANCE_M,
               -np.linalg.norm(c - xy), i) for i, c in enumerate(candidates)]
    best = candidates[min(scored)[2]]
    pb.resetBasePositionAndOrientation(
        world.cube_id, [float(best[0]), float(best[1]), world.cube_size / 2.0],
        pose[3:].tolist(), physicsClientId=world.client)
    pb.resetBaseVelocity(world.cube_id, [0.0, 0.0, 0.0], [0.0, 0.0, 0.0],
                         physicsClientId=world.client)


def cube_pixel(world: PandaWorld) -> Tuple[float, float]:
    """Project the cube centre into the camera image; return ``(u, v)`` pixels."""
    eye, quat = world.camera_pose()
    from scipy.spatial.transform import Rotation
    rot = Rotation.from_quat(quat).as_matrix()
    p = rot.T @ (world.cube_pose()[:3] - eye)
    k = world.camera_info().k
    return float(k[0, 0] * p[0] / p[2] + k[0, 2]), float(k[1, 1] * p[1] / p[2] + k[1, 2])


def _occlude(world: PandaWorld) -> None:
    """Black out a square of the image around where the cube is at the onset (kept fixed)."""
    original = type(world).render.__get__(world)
    u, v = cube_pixel(world)
    h, w = world.config.camera.height_px, world.config.camera.width_px
    r0, r1 = max(0, int(v) - OCCLUSION_HALF_PX), min(h, int(v) + OCCLUSION_HALF_PX)
    c0, c1 = max(0, int(u) - OCCLUSION_HALF_PX), min(w, int(u) + OCCLUSION_HALF_PX)

    def render() -> np.ndarray:
        img = original()
        img[r0:r1, c0:c1] = 0
        return img

    world.render = render


def _freeze(world: PandaWorld) -> None:
    """From the onset on, the camera keeps delivering the frame of the onset (fresh stamps)."""
    frozen = type(world).render(world)

    def render() -> np.ndarray:
        return frozen.copy()

    world.render = render


@dataclass(frozen=True)
class Scenario:
    """One OOD condition: applied at reset (``onset_step`` 0) or before decision ``onset_step``."""

    name: str
    onset_step: int
    apply: Callable[[PandaWorld], None]
    description: str


def scenarios(onset_step: int = DEFAULT_ONSET_STEP) -> Dict[str, Scenario]:
    """Return the OOD scenarios by name; mid-episode ones start at decision ``onset_step``."""
    items = [
        Scenario('cube_color', 0, _cube_color, f'cube rgba {UNSEEN_CUBE_RGBA}'),
        Scenario('cube_size', 0, _cube_size, f'cube edge {UNSEEN_CUBE_SIZE_M} m'),
        Scenario('camera_shift', 0, _camera_shift,
                 f'camera eye +{CAMERA_EYE_SHIFT_M} m, target +{CAMERA_TARGET_SHIFT_M} m'),
        Scenario('lighting', 0, _lighting, 'light direction/colour/coefficients changed'),
        Scenario('cube_displaced', onset_step, _displace_cube,
                 f'cube jumps {DISPLACEMENT_M} m sideways'),
        Scenario('camera_occlusion', onset_step, _occlude,
                 f'{2 * OCCLUSION_HALF_PX} px black square over the cube'),
        Scenario('frozen_frame', onset_step, _freeze, 'camera repeats the onset frame'),
    ]
    return {s.name: s for s in items}


class ScenarioHook:
    """World hook for :class:`LockstepStack`: nominal on reset, then the scenario at its onset.

    ``scenario`` None runs nominal episodes. ``onset_s`` is the simulated time at which the
    condition started in the current episode, None until it has.
    """

    def __init__(self, scenario: Optional[Scenario] = None) -> None:
        self.scenario = scenario
        self.onset_s: Optional[float] = None

    def on_reset(self, world: PandaWorld, seed: int) -> None:
        """Restore the nominal world, then apply a reset-time scenario."""
        restore_nominal(world)
        self.onset_s = None
        if self.scenario is not None and self.scenario.onset_step <= 0:
            self.scenario.apply(world)
            self.onset_s = world.sim_time

    def on_step(self, world: PandaWorld, step: int) -> None:
        """Apply a mid-episode scenario before decision ``step`` observes."""
        s = self.scenario
        if s is not None and s.onset_step > 0 and step == s.onset_step:
            s.apply(world)
            self.onset_s = world.sim_time


class MonitorEvalStack(LockstepStack):
    """:class:`LockstepStack` that keeps the episode's monitor and the first violation time."""

    def __init__(self, policy: str, checkpoint: Optional[str], hook: ScenarioHook,
                 max_decisions: Optional[int] = None) -> None:
        super().__init__(policy, checkpoint, use_filter=True, monitor='gate', world_hook=hook)
        self.hook = hook
        self.last_monitor = None
        self.first_violation_s: Optional[float] = None
        self.scores: List[Tuple[float, float]] = []
        self.frame_times: List[float] = []
        if max_decisions is not None:
            task = self.world.task
            full = task.max_decision_steps
            task.max_decision_steps = lambda hz: min(full(hz), int(max_decisions))

    def _new_monitor(self):
        monitor = super()._new_monitor()
        self.last_monitor = monitor
        self.first_violation_s = None
        self.scores = []
        self.frame_times = []
        score_chunk = monitor.on_chunk_samples
        take_frame = monitor.on_camera

        def on_chunk_samples(stamp, times_from_start, samples, now):
            result = score_chunk(stamp, times_from_start, samples, now)
            if result is not None:
                self.scores.append((float(now), float(result.score)))
            return result

        def on_camera(stamp, now, image=None):
            self.frame_times.append(float(now))
            return take_frame(stamp, now, image)

        monitor.on_chunk_samples = on_chunk_samples  # keep each score with its time
        monitor.on_camera = on_camera  # and when the monitor saw frames
        return monitor

    def _control_step(self, stats, monitor, cap) -> None:
        before = stats.violations
        super()._control_step(stats, monitor, cap)
        if stats.violations > before and self.first_violation_s is None:
            self.first_violation_s = self.world.sim_time


@dataclass
class Outcome:
    """One episode under one scenario (``'nominal'`` for none)."""

    scenario: str
    seed: int
    success: bool
    violations: int
    end_s: float
    first_violation_s: Optional[float]
    onset_s: Optional[float]
    alarms: List[Tuple[float, str, str]] = field(default_factory=list)  # (time, mode, reason)
    scores: List[Tuple[float, float]] = field(default_factory=list)  # (time, score)
    last_frame_s: float = float('nan')  # when the monitor saw the episode's last frame

    @property
    def max_score(self) -> float:
        """Return the episode's highest consistency score (nan without any)."""
        return max((v for _, v in self.scores), default=float('nan'))

    def max_score_after_onset(self) -> float:
        """Return the highest score of a decision at or after the onset (nan without any)."""
        if self.onset_s is None:
            return float('nan')
        return max((v for t, v in self.scores if t >= self.onset_s - 1e-9), default=float('nan'))

    @property
    def exposed(self) -> bool:
        """Return True if the monitor saw a frame under the OOD condition (if any)."""
        return self.onset_s is not None and self.last_frame_s >= self.onset_s - 1e-9

    def detection(self) -> Optional[Tuple[float, str, str]]:
        """Return the first alarm at or after the onset, or None."""
        if self.onset_s is None:
            return None
        for alarm in self.alarms:
            if alarm[0] >= self.onset_s - 1e-9:
                return alarm
        return None

    @property
    def latency_s(self) -> Optional[float]:
        """Return the time from onset to detection [s], or None if not detected."""
        d = self.detection()
        return None if d is None else d[0] - self.onset_s

    @property
    def pre_onset_alarm(self) -> bool:
        """Return True if an alarm was raised before the onset (or without any onset)."""
        limit = np.inf if self.onset_s is None else self.onset_s - 1e-9
        return any(a[0] < limit for a in self.alarms)

    @property
    def adverse(self) -> bool:
        """Return True if the task failed or a barrier / speed violation occurred."""
        return (not self.success) or self.violations > 0

    def adverse_time_s(self) -> float:
        """Return when the first adverse event happened (failure counts at the episode end)."""
        t = np.inf if self.success else self.end_s
        if self.first_violation_s is not None:
            t = min(t, self.first_violation_s)
        return t

    @property
    def detected_before_adverse(self) -> bool:
        """Return True if detection came strictly before the first adverse event."""
        d = self.detection()
        return d is not None and d[0] < self.adverse_time_s()


def _alarms(monitor) -> List[Tuple[float, str, str]]:
    """Return the gate's alarms: transitions to SLOW/HOLD, or a start-up HOLD never left."""
    transitions = monitor.transitions
    alarms = [(t.time, t.to_mode.name, t.reason) for t in transitions if t.to_mode != Mode.NOMINAL]
    if not transitions and monitor.mode == Mode.HOLD:
        alarms.append((0.0, Mode.HOLD.name, 'start-up HOLD never released'))
    return alarms


def run_one(stack: MonitorEvalStack, name: str, seed: int) -> Outcome:
    """Run one episode of ``stack`` (its hook holds the scenario) and summarise it."""
    r = stack.run_episode(seed)
    monitor = stack.last_monitor
    return Outcome(name, seed, bool(r.success), int(r.violations), float(r.duration_s),
                   stack.first_violation_s, stack.hook.onset_s, _alarms(monitor),
                   list(stack.scores), max(stack.frame_times, default=float('nan')))


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else float('nan')


def _rate(k: int, n: int) -> float:
    return k / n if n else float('nan')


def _mechanism(reason: str) -> str:
    return 'score' if 'consistency score' in reason else 'watchdog'


def table(nominal: List[Outcome], ood: Dict[str, List[Outcome]],
          scen: Dict[str, Scenario], decision_hz: float, threshold: float) -> List[str]:
    """Return the report lines (header, one row per scenario)."""
    twins = {o.seed: o for o in nominal}
    head = (f'{"scenario":<17} {"onset":>6} {"eps":>4} {"exp":>4} {"TPR":>6} {"TPR0":>6} '
            f'{"TPR_H":>6} '
            f'{"lat_s":>6} '
            f'{"pre":>4} {"det<bad":>9} {"success":>8} {"viol":>5} {"max/thr":>8}  via')
    lines = [head, '-' * len(head)]
    fp = sum(o.pre_onset_alarm for o in nominal)
    fp_hold = sum(o.pre_onset_alarm for o in hold_only(nominal))
    lines.append(f'{"nominal (FPR)":<17} {"-":>6} {len(nominal):>4} {len(nominal):>4} '
                 f'{_rate(fp, len(nominal)):>6.3f} {"-":>6} {_rate(fp_hold, len(nominal)):>6.3f} '
                 f'{"-":>6} {fp:>4} {"-":>9} '
                 f'{_rate(sum(o.success for o in nominal), len(nominal)):>8.3f} '
                 f'{sum(o.violations > 0 for o in nominal):>5} '
                 f'{_median([o.max_score / threshold for o in nominal]):>8.2f}  '
                 + _via([a for o in nominal for a in o.alarms[:1]]))
    for name, outs in ood.items():
        exposed = [o for o in outs if o.exposed]
        detected = [o for o in exposed if o.detection() is not None]
        held = [o for o in hold_only(exposed) if o.detection() is not None]
        # Chance level: the same seed without the condition, alarming after the same onset.
        paired = [replace(twins[o.seed], onset_s=o.onset_s) for o in exposed if o.seed in twins]
        chance = _rate(sum(t.detection() is not None for t in paired), len(paired))
        bad = [o for o in exposed if o.adverse]
        before = sum(o.detected_before_adverse for o in bad)
        onset = scen[name].onset_step
        onset_txt = 'reset' if onset <= 0 else f'{onset / decision_hz:.1f}s'
        frac = f'{before}/{len(bad)}' if bad else '-'
        lines.append(
            f'{name:<17} {onset_txt:>6} {len(outs):>4} {len(exposed):>4} '
            f'{_rate(len(detected), len(exposed)):>6.3f} {chance:>6.3f} '
            f'{_rate(len(held), len(exposed)):>6.3f} '
            f'{_median([o.latency_s for o in detected]):>6.2f} '
            f'{sum(o.pre_onset_alarm for o in exposed):>4} {frac:>9} '
            f'{_rate(sum(o.success for o in exposed), len(exposed)):>8.3f} '
            f'{sum(o.violations > 0 for o in exposed):>5} '
            f'{_median([o.max_score_after_onset() / threshold for o in exposed]):>8.2f}  '
            + _via([o.detection() for o in detected]))
    return lines


def _via(alarms: List[Tuple[float, str, str]]) -> str:
    counts: Dict[str, int] = {}
    for a in alarms:
        key = f'{_mechanism(a[2])}->{a[1]}'
        counts[key] = counts.get(key, 0) + 1
    return ' '.join(f'{k}:{v}' for k, v in sorted(counts.items())) or '-'


def hold_only(outcomes: List[Outcome]) -> List[Outcome]:
    """Return copies of ``outcomes`` whose alarms are only the transitions to HOLD."""
    return [replace(o, alarms=[a for a in o.alarms if a[1] == Mode.HOLD.name])
            for o in outcomes]


def summary_line(nominal: List[Outcome], ood: Dict[str, List[Outcome]]) -> str:
    """Return the machine-readable last line ``tpr=... fpr=... detection_latency_s=...``."""
    exposed = [o for outs in ood.values() for o in outs if o.exposed]
    detected = [o for o in exposed if o.detection() is not None]
    tpr = _rate(len(detected), len(exposed))
    fpr = _rate(sum(o.pre_onset_alarm for o in nominal), len(nominal))
    latency = _median([o.latency_s for o in detected])
    return f'tpr={tpr:.4f} fpr={fpr:.4f} detection_latency_s={latency:.3f}'


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='genpolicy-monitor-eval',
                                description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--nominal', type=int, default=20, help='held-out nominal episodes')
    p.add_argument('--episodes-per-scenario', type=int, default=5)
    p.add_argument('--seed', type=int, default=EVAL_SEED_START,
                   help='first seed (>= 100000 are held out); every scenario reuses the seeds')
    p.add_argument('--scenarios', default='all',
                   help='comma-separated subset of: ' + ','.join(scenarios()))
    p.add_argument('--onset-step', type=int, default=DEFAULT_ONSET_STEP,
                   help='decision step at which mid-episode conditions start')
    p.add_argument('--max-decisions', type=int, default=None,
                   help='cut every episode after this many decisions (smoke runs)')
    p.add_argument('--policy', choices=('flow', 'expert'), default='flow')
    p.add_argument('--checkpoint', default=None, help='policy checkpoint (default: shipped)')
    p.add_argument('--threads', type=int, default=1, help='torch threads per process')
    p.add_argument('--jobs', type=int, default=1,
                   help='worker processes running episodes in parallel (one stack each)')
    args = p.parse_args(argv)
    known = scenarios(args.onset_step)
    names = list(known) if args.scenarios == 'all' else [
        s.strip() for s in args.scenarios.split(',') if s.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        p.error(f'unknown scenario(s) {unknown}; choose from {list(known)}')
    if args.nominal < 0 or args.episodes_per_scenario < 0:
        p.error('episode counts must be >= 0')
    if args.onset_step < 1:
        p.error('--onset-step must be >= 1 (0 would be a reset-time condition)')
    args.scenario_names = names
    return args


_WORKER: Dict[str, object] = {}


def _worker_init(policy: str, checkpoint: Optional[str], max_decisions: Optional[int],
                 onset_step: int, threads: int) -> None:
    """Build this process's stack (once); also used in the main process."""
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass
    hook = ScenarioHook()
    _WORKER['scenarios'] = scenarios(onset_step)
    _WORKER['stack'] = MonitorEvalStack(policy, checkpoint, hook, max_decisions)


def _worker_run(job: Tuple[str, int]) -> Outcome:
    """Run episode ``(scenario name, seed)`` on this process's stack."""
    name, seed = job
    stack = _WORKER['stack']
    stack.hook.scenario = None if name == 'nominal' else _WORKER['scenarios'][name]
    return run_one(stack, name, seed)


def _episode_line(o: Outcome, threshold: float) -> str:
    d = o.detection()
    first = o.alarms[0] if o.alarms else None
    text = (f'{o.scenario:<17} seed {o.seed}: {"success" if o.success else "FAILURE"} '
            f'viol={o.violations} max_score={o.max_score:.3f} (thr {threshold:.3f}) '
            + ('onset=-' if o.onset_s is None else
               f'onset={o.onset_s:.2f}s max_after_onset={o.max_score_after_onset():.3f}'))
    if d is not None:
        return text + f' detected +{d[0] - o.onset_s:.2f}s {d[1]}: {d[2]}'
    if first is not None:
        return text + f' alarm at {first[0]:.2f}s {first[1]}: {first[2]}'
    return text + ' no alarm'


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of ``genpolicy-monitor-eval``."""
    args = _parse(argv)
    from tqdm import tqdm
    scen = scenarios(args.onset_step)
    jobs: List[Tuple[str, int]] = [('nominal', args.seed + i) for i in range(args.nominal)]
    jobs += [(name, args.seed + i) for name in args.scenario_names
             for i in range(args.episodes_per_scenario)]
    nominal: List[Outcome] = []
    ood: Dict[str, List[Outcome]] = {name: [] for name in args.scenario_names}
    t0 = time.monotonic()
    settings = (args.policy, args.checkpoint, args.max_decisions, args.onset_step, args.threads)
    _worker_init(*settings)
    stack = _WORKER['stack']
    threshold = stack.calibration.threshold
    outcomes: Dict[Tuple[str, int], Outcome] = {}
    pool = None
    try:
        if args.jobs > 1 and len(jobs) > 1:
            import multiprocessing
            pool = multiprocessing.get_context('spawn').Pool(
                min(args.jobs, len(jobs)), initializer=_worker_init, initargs=settings)
            results = pool.imap_unordered(_worker_run, jobs)
        else:
            results = map(_worker_run, jobs)
        for o in tqdm(results, total=len(jobs), desc='monitor-eval episodes', unit='ep'):
            outcomes[(o.scenario, o.seed)] = o
            tqdm.write(_episode_line(o, threshold))
    finally:
        if pool is not None:
            pool.terminate()  # every result has been taken (or an error ends the run)
            pool.join()
        stack.close()
    for name, seed in jobs:
        (nominal if name == 'nominal' else ood[name]).append(outcomes[(name, seed)])
    print(f'monitor threshold {threshold:.4f} ({stack.calibration.policy_checkpoint}, '
          f'{stack.calibration.date}); policy {args.policy}; seeds from {args.seed}; '
          f'{time.monotonic() - t0:.0f} s wall', flush=True)
    print('columns: exp = episodes that reached the onset; TPR = detected/exp (nominal: '
          'alarm rate = FPR); TPR0 = chance level: the nominal episode of the same seed '
          'alarming at or after the same onset; TPR_H = TPR counting only transitions to HOLD; '
          'lat_s = median onset->alarm [s]; pre = alarms before the onset; '
          'det<bad = detected before the first violation or the failed end / episodes failed '
          'or violating; viol = episodes with violations; max/thr = median of the highest score '
          '(after the onset) / threshold; via = first alarm cause->mode',
          flush=True)
    for line in table(nominal, ood, scen, stack.sim.decision_hz, threshold):
        print(line, flush=True)
    print('HOLD only (alarm = a transition to HOLD): '
          + summary_line(hold_only(nominal), {k: hold_only(v) for k, v in ood.items()}),
          flush=True)
    print(summary_line(nominal, ood), flush=True)
    sys.exit(0)


if __name__ == '__main__':
    main()
