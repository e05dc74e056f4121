"""What every fault-injection scenario checks about the arm, and the motions it attacks.

Machine load is not under test: the thresholds on time are generous bounds a loaded 2-core
machine meets, and the measured times are reported (``benchmarks/fault_report.py``) against the
issue's targets. Everything else is the arm's behaviour: speed, barriers, rest, modes.
"""

import threading
import time
from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np

from genpolicy_ros.monitor.watchdogs import FaultKind, STREAMS
from fi_graph import (ArmReport, COMMAND_SPEED_TOLERANCE_MPS, FaultGraph, SPEED_TOLERANCE_MPS,
                      time_to_rest, wait_for)

SOURCES = tuple(STREAMS) + ('calibration',)
# The target: the arm holds within 100 ms of an input's timeout. Asserted with an
# allowance for the scheduling delays of five Python processes on two loaded cores (the
# measured value goes to the report).
HOLD_TARGET_S = 0.1
HOLD_ALLOWANCE_S = 0.6
# Measured decelerations may exceed the commanded bound by PyBullet's servo transient.
ACCEL_TOLERANCE = 1.3
# Jerk is compared with the arm's jerk limits (urdf/panda_model.yaml) at hold transitions.
JERK_TOLERANCE = 1.0


def push_line(graph: FaultGraph, speed_mps: float = 0.05,
              length_m: float = 0.12) -> Callable[[float], np.ndarray]:
    """Return a reference that sweeps the EE back and forth along x at its current height.

    The nominal motion of the attacks: pushing height and area of the task the policy was
    trained on (so the monitor's camera checks see familiar images), well inside every barrier.
    """
    start = graph.ee().copy()
    period = 2.0 * length_m / speed_mps
    t0 = graph.now()

    def reference(t: float) -> np.ndarray:
        phase = ((t - t0) % period) / period
        s = 2.0 * phase if phase < 0.5 else 2.0 - 2.0 * phase   # 0 -> 1 -> 0
        return start + np.array([length_m * s, 0.0, 0.0])
    return reference


def move_nominally(graph: FaultGraph, seconds: float = 1.0, timeout_s: float = 60.0,
                   stuck_s: float = 10.0) -> float:
    """Start the nominal push motion; return the ROS time it started, once it has run ``seconds``.

    The attack must hit a moving arm in NOMINAL, or "the arm held" would prove nothing: this
    returns only while the monitor is in NOMINAL (or SLOW) and the arm is moving now. On a
    loaded machine a watchdog may hold first (a scheduling gap reads as a stale input), so it
    waits for that state against a generous deadline instead of a fixed number of short tries:
    the operator resets a HOLD, as beside a real arm, and the motion restarts from where the arm
    stopped; after ``stuck_s`` without a nominal motion the graph is recovered (episode start).
    """
    deadline = time.monotonic() + timeout_s

    def restart() -> Tuple[float, float]:
        graph.policy.reference = push_line(graph)
        return graph.now(), time.monotonic()
    t0, started = restart()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        mode = graph.observer.mode()
        if mode in ('NOMINAL', 'SLOW'):
            now = graph.now()
            if now - t0 >= seconds and max_joint_speed(graph, now - 0.3) > 0.01:
                return t0
            if time.monotonic() - started < stuck_s:
                continue
        elif time.monotonic() - started < stuck_s:
            # Stop the reference while held: it must not run ahead of the arm meanwhile.
            graph.policy.hold_here()
            if graph.reset_monitor()[0]:
                t0, started = restart()
            else:
                time.sleep(0.25)   # refused: its inputs are not live yet
            continue
        graph.recover()
        t0, started = restart()
    raise AssertionError(f'no nominal motion within {timeout_s:.0f} s (mode '
                         f'{graph.observer.mode()}): is the machine overloaded?\n{graph.logs()}')


# Above the cube (5 cm) and the fingers' reach below the TCP: travel height of the safety tests,
# so the arm never ploughs into the sim's cube, an obstacle the filter does not model.
TRAVEL_Z_M = 0.15


class OperatorOnDuty:
    """While in a ``with`` block, reset the monitor whenever it holds (counts the resets).

    ``is_holding()`` reads the monitor's mode, ``reset()`` asks for a reset and returns whether
    it was accepted; checked every ``period_s``. Used by the fault tests and by loop_bench.
    """

    def __init__(self, is_holding: Callable[[], bool], reset: Callable[[], bool],
                 period_s: float = 0.2) -> None:
        self.is_holding, self.reset, self.period_s = is_holding, reset, period_s
        self.resets = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name='auto_release')

    def __enter__(self) -> 'OperatorOnDuty':
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=15.0)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            if self.is_holding():
                self.resets += int(self.reset())


class AutoRelease(OperatorOnDuty):
    """An operator on duty for the fault graph's monitor.

    For tests of the filter or the driver, where the monitor is not under test: on an
    overloaded machine a watchdog may trip on a scheduling gap, which must not stop the attack.
    ``resets`` counts the accepted resets (reported with the scenario).
    """

    def __init__(self, graph: FaultGraph) -> None:
        super().__init__(lambda: graph.observer.mode() == 'HOLD',
                         lambda: graph.reset_monitor()[0])
        self.graph = graph


def stage(graph: FaultGraph, point: np.ndarray, timeout_s: float = 30.0) -> bool:
    """Move the EE straight up to ``TRAVEL_Z_M``, then to ``point``; return True when there.

    The sim's cube is a real body the filter does not know (an unmodelled obstacle is outside
    its guarantee): attacks start from above it. A leg not reached in ``timeout_s`` raises an
    AssertionError saying where the arm stopped and what the monitor and filter said meanwhile.
    """
    point = np.asarray(point, dtype=float)
    up = graph.ee().copy()
    up[2] = max(up[2], TRAVEL_Z_M)
    above = np.array([point[0], point[1], max(point[2], TRAVEL_Z_M)])
    # The first leg only has to reach the travel height: where an earlier test left the arm at
    # a barrier (a folded elbow near the base), the filter rightly keeps it a centimetre from
    # its own start point (seen: at rest 10.1 mm away, the filter intervening on every step).
    legs = ((up, 0.01, slice(2, 3)), (above, 0.01, slice(0, 3)), (point, 0.005, slice(0, 3)))
    with AutoRelease(graph) as operator:
        for leg, (target, tol, axes) in enumerate(legs):
            t0 = graph.now()
            graph.policy.reference = lambda t, p=target: p
            if not wait_for(lambda: np.linalg.norm((graph.ee() - target)[axes]) < tol,
                            timeout_s, 0.05):
                raise AssertionError(_stage_failure(graph, leg, target, axes, tol, t0,
                                                    operator.resets))
    return True


def _stage_failure(graph: FaultGraph, leg: int, target: np.ndarray, axes: slice, tol: float,
                   t0: float, resets: int) -> str:
    ee = graph.ee()
    t, q, dq = graph.observer.arm_window(graph.now() - 1.0)
    speed = float(graph.analysis.speeds(q, dq).max()) if len(t) else float('nan')
    modes = graph.observer.modes_since(t0)
    statuses = graph.observer.statuses_since(t0)
    return (f'stage leg {leg} not reached: EE {np.round(ee, 4)}, target {np.round(target, 4)}, '
            f'{np.linalg.norm((ee - target)[axes]) * 1e3:.1f} mm off in axes {axes.start}-'
            f'{axes.stop - 1} (tolerance {tol * 1e3:.0f} mm), EE '
            f'speed over the last second <= {speed:.4f} m/s; monitor modes since the leg began: '
            f'{sorted(set(modes))} (last {modes[-1] if modes else None}, operator resets '
            f'{resets}); filter statuses: '
            f'{ {s: statuses.count(s) for s in set(statuses)} }; {graph.policy.status()}\n'
            + graph.logs())


def move_with_policy_node(graph: FaultGraph, attempts: int = 3) -> float:
    """Let the real policy node (scripted expert) drive a fresh episode; return when it moves."""
    for _ in range(attempts):
        graph.use_policy('node')
        graph.reset_episode()
        graph.release(30.0)
        t0 = graph.now()
        chunks = graph.relays['policy_chunk'].forwarded
        # Motion alone may be the arm settling after the episode reset: the node must be
        # feeding chunks too (right after the graph started it may still be loading).
        if (wait_for_motion(graph, t0, 8.0)
                and wait_for(lambda: graph.relays['policy_chunk'].forwarded > chunks, 8.0)
                and graph.observer.mode() == 'NOMINAL'):
            return t0
        graph.recover()
    raise AssertionError('the policy node never moved the arm in NOMINAL\n' + graph.logs())


def check_safe(graph: FaultGraph, scenario, t0: float, t1: float = np.inf,
               allowed_dead: Iterable[str] = (), **metrics) -> ArmReport:
    """Assert the arm stayed safe in ``[t0, t1]`` and every node lives; record the report.

    Safe: no hard barrier (table, obstacles, joint limits) below zero, penetration <= 1 mm, the
    measured EE speed within the cap (+ the driver's correction allowance).
    """
    report = graph.report(t0, t1)
    commanded = commanded_speed(graph, t0, t1)
    scenario.record(report, max_commanded_speed_mps=commanded, **metrics)
    assert report.samples > 0, 'no joint states observed'
    cap = graph.safety.speed_cap.max_speed_mps
    assert commanded <= cap + COMMAND_SPEED_TOLERANCE_MPS, f'commanded {commanded:.4f} m/s'
    assert report.max_speed_mps <= cap + SPEED_TOLERANCE_MPS, report
    assert report.violations == 0, report
    assert report.penetration_mm <= 1.0, report
    dead = [name for name, p in graph.procs.items() if not p.alive and name not in allowed_dead]
    assert not dead, f'node process(es) died: {dead}\n{graph.logs()}'
    return report


def commanded_speed(graph: FaultGraph, t0: float, t1: float = np.inf) -> float:
    """Return the largest EE speed [m/s] the driver was commanded in the window.

    Evaluated where the driver executes each command: at the arm's measured configuration when
    the command first arrived (not at its position target, which may lead the arm). The monitor
    re-sends the newest command every tick until it is stale; the driver follows a command for
    at most its coasting time from its first copy (sim_node), so copies add nothing.
    """
    tc, q_cmd, dq_cmd = graph.observer.command_window(t0, t1)
    t, q, _ = graph.observer.arm_window(t0 - 1.0, t1)
    if len(tc) == 0 or len(t) == 0:
        return 0.0
    first = np.ones(len(tc), dtype=bool)
    first[1:] = np.any(q_cmd[1:] != q_cmd[:-1], axis=1) | np.any(dq_cmd[1:] != dq_cmd[:-1], axis=1)
    idx = np.clip(np.searchsorted(t, tc[first]) - 1, 0, len(t) - 1)
    return float(graph.analysis.speeds(q[idx], dq_cmd[first]).max())


def wait_rest(graph: FaultGraph, timeout_s: float = 10.0, duration_s: float = 0.3,
              max_lag_s: float = 0.5) -> bool:
    """Wait until the arm's joint states show it at rest for the last ``duration_s``.

    Judged on the samples, as :func:`hold_metrics` does: a gap in the joint states or stamps
    lagging the clock (a loaded machine) is no evidence of rest, so the newest ``duration_s``
    of samples must all be at rest, the newest no older than ``max_lag_s``.
    """
    def rested() -> bool:
        t1 = graph.now()
        t, _, dq = graph.observer.arm_window(t1 - duration_s - max_lag_s, t1)
        return (len(t) > 3 and t1 - t[-1] <= max_lag_s
                and time_to_rest(t, dq, t[0], settle_s=duration_s) is not None)
    return wait_for(rested, timeout_s, 0.05)


def hold_metrics(graph: FaultGraph, t_timeout: float, t_end: float) -> Dict[str, float]:
    """Return how the arm came to a hold after an input timed out at ``t_timeout``.

    ``time_to_hold_s`` from the timeout to rest (0 if it was already at rest), the largest
    deceleration over the arm's limit (``decel_ratio``) and jerk over its limit
    (``jerk_ratio``) from 0.3 s before the timeout to the end.
    """
    t, _, dq = graph.observer.arm_window(t_timeout - 0.3, t_end)
    tth = time_to_rest(t, dq, t_timeout, max_step_s=graph.sim_max_step_s)
    analysis = graph.analysis
    decel = accel_ratio(t, dq, analysis.model.limits.acceleration)
    jerk = analysis.jerk_ratio(t, dq)
    return dict(time_to_hold_s=np.inf if tth is None else tth,
                decel_ratio=float(decel.max(initial=0.0)),
                jerk_ratio=float(jerk.max(initial=0.0)))


def accel_ratio(t: np.ndarray, dq: np.ndarray, limits: np.ndarray,
                grid_s: float = 0.02) -> np.ndarray:
    """Return |joint acceleration| / limit on a uniform ``grid_s`` grid (stamp jitter removed)."""
    if len(t) < 3 or t[-1] - t[0] < 3 * grid_s:
        return np.zeros(0)
    grid = np.arange(t[0], t[-1], grid_s)
    v = np.stack([np.interp(grid, t, dq[:, j]) for j in range(dq.shape[1])], axis=1)
    return np.max(np.abs(np.diff(v, axis=0) / grid_s) / limits, axis=1)


def assert_held(graph: FaultGraph, metrics: Dict[str, float]) -> None:
    """Assert a hold was reached in time with bounded deceleration and jerk."""
    assert metrics['time_to_hold_s'] <= HOLD_TARGET_S + HOLD_ALLOWANCE_S, metrics
    assert metrics['decel_ratio'] <= ACCEL_TOLERANCE, metrics
    assert metrics['jerk_ratio'] <= JERK_TOLERANCE, metrics


def fault_keys(graph: FaultGraph, since: float, wait_for_any: Iterable[str] = (),
               timeout_s: float = 3.0) -> set:
    """Return the monitor's fault keys (``fault.<source>.<KIND>``) reported since ``since``.

    Diagnostics come at 2 Hz: with ``wait_for_any`` it waits up to ``timeout_s`` for one of
    those keys to appear.
    """
    def keys() -> set:
        out = set()
        for _, status in graph.observer.diagnostics_since('monitor_node: gate', since):
            for kv in status.values:
                if kv.key.startswith('fault.'):
                    out.add(kv.key)
                elif kv.key == 'reason':
                    out |= _latched(kv.value)
        return out
    wanted = set(wait_for_any)
    if wanted:
        wait_for(lambda: bool(keys() & wanted), timeout_s, 0.05)
    return keys()


def _latched(reason: str) -> set:
    """Return the fault keys named in a HOLD/SLOW reason (``<source>: <FaultKind sentence>``).

    A fault that clears within a diagnostics period (a bad message among good ones) is gone
    from the ``fault.*`` keys by the next report, but the latched mode keeps it as its reason.
    """
    return {f'fault.{source}.{kind.name}' for kind in FaultKind for source in SOURCES
            if f'{source}: {kind.value}' in reason}


def wait_mode(graph: FaultGraph, mode: str, timeout_s: float = 10.0) -> bool:
    """Wait until the monitor publishes ``mode``."""
    return wait_for(lambda: graph.observer.mode() == mode, timeout_s, 0.02)


def stays(graph: FaultGraph, predicate: Callable[[], bool], seconds: float,
          period_s: float = 0.05) -> Tuple[bool, Optional[str]]:
    """Return ``(True, None)`` if ``predicate`` held throughout ``seconds``, else when it broke."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False, f'broke after {seconds - (deadline - time.monotonic()):.2f} s'
        time.sleep(period_s)
    return True, None


def wait_for_motion(graph: FaultGraph, since: float, timeout_s: float = 8.0,
                    speed_radps: float = 0.02) -> bool:
    """Wait until some joint moves faster than ``speed_radps`` after ``since``."""
    def moving() -> bool:
        _, _, dq = graph.observer.arm_window(since)
        return len(dq) > 0 and float(np.max(np.abs(dq))) > speed_radps
    return wait_for(moving, timeout_s, 0.05)


def max_joint_speed(graph: FaultGraph, t0: float, t1: float = np.inf) -> float:
    """Return the largest measured joint speed [rad/s] in the window."""
    _, _, dq = graph.observer.arm_window(t0, t1)
    return float(np.max(np.abs(dq))) if len(dq) else 0.0
