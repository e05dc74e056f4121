"""The CBF-QP safety filter: from a desired EE twist to a joint command that keeps every barrier.

``SafetyFilter.step(state, reference)`` is the whole contract: it returns the command actually to
be sent, a status code with a human sentence, the value and activity of every barrier, and the
solve time. It never raises: bad input, an infeasible or failed QP, or a slow solve all end in the
defined fallback (decelerate toward rest within the acceleration limits, then hold).
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional, Sequence

import numpy as np

from genpolicy_ros.safety.barriers import BarrierRows, BarrierSet
from genpolicy_ros.safety.config import SafetyConfig
from genpolicy_ros.safety.hold import decelerate
from genpolicy_ros.safety.qp import build_problem, make_backend, max_violation, QPProblem
from genpolicy_ros.safety.reference import ReferenceTracker

_ACTIVE_TOL = 1e-6      # a row within this of its bound counts as active [rad/s, normalised]
_CHANGED_TOL = 1e-7     # command farther than this from the resolved-rate optimum: intervened
_SLACK_TOL = 1e-7       # total slack above this: a soft limit gave way
_VERIFY_TOL = 1e-9      # allowed shortfall of the true barrier at the predicted state [m]
_ANCHOR_BISECTIONS = 5  # halvings of the anchor's lead at a barrier (1/32 of it, < 2 mrad)


class FilterStatus(Enum):
    """Outcome of one filter step (one code per kind of intervention, like MoveIt Servo)."""

    OK = 0
    INTERVENED = 1
    SLACK_USED = 2
    STALE_REFERENCE = 3
    INFEASIBLE_FALLBACK = 4
    SOLVER_FAILED_FALLBACK = 5
    TIME_BUDGET_FALLBACK = 6
    INVALID_INPUT_FALLBACK = 7

    @property
    def message(self) -> str:
        """A sentence for the operator."""
        return _STATUS_MESSAGES[self]

    @property
    def is_fallback(self) -> bool:
        """Whether the filter is stopping the arm because of a fault (not following anything)."""
        return self.name.endswith('_FALLBACK')


_STATUS_MESSAGES = {
    FilterStatus.OK: 'No safety limit active, following the reference',
    FilterStatus.INTERVENED: 'Close to a safety limit, command modified',
    FilterStatus.SLACK_USED: 'Soft limit relaxed (workspace box or acceleration) to keep the '
                             'hard limits',
    FilterStatus.STALE_REFERENCE: 'No fresh reference, decelerating to hold',
    FilterStatus.INFEASIBLE_FALLBACK: 'Safety constraints conflict, decelerating to hold',
    FilterStatus.SOLVER_FAILED_FALLBACK: 'Safety QP failed or returned an unsafe command, '
                                         'decelerating to hold',
    FilterStatus.TIME_BUDGET_FALLBACK: 'Safety QP exceeded its time budget, decelerating to hold',
    FilterStatus.INVALID_INPUT_FALLBACK: 'Invalid input (NaN, Inf or wrong size), decelerating '
                                         'to hold',
}

# Phrases for the barrier kinds (the part of a report name before the colon).
_KIND_PHRASES = {
    'table': 'Close to the table',
    'obstacle': 'Close to an obstacle',
    'workspace': 'At the workspace boundary',
    'joint_limit': 'Close to a joint limit',
    'joint_velocity': 'At a joint velocity limit',
    'speed_cap': 'At the end-effector speed cap',
    'acceleration': 'At the acceleration limit',
}


@dataclass
class RobotState:
    """Measured joint state: ``q`` (7,) [rad], ``dq`` (7,) [rad/s], ``stamp`` [s]."""

    q: np.ndarray
    dq: np.ndarray
    stamp: float


@dataclass
class BarrierReport:
    """One barrier group, ``value`` >= 0 when satisfied.

    Position barriers (table, obstacle, workspace, joint_limit) report h(q) [m or rad] at the
    current state; command limits (joint_velocity, speed_cap, acceleration) the margin left by
    the command [rad/s or m/s].
    """

    name: str
    value: float
    active: bool


@dataclass
class FilterResult:
    """The command actually to be sent and why it is what it is."""

    q_cmd: np.ndarray            # (7,) position target q + dt * dq_cmd [rad]
    dq_cmd: np.ndarray           # (7,) velocity command [rad/s]
    status: FilterStatus
    barriers: List[BarrierReport]
    slack: float                 # total slack of the soft rows (0 unless SLACK_USED)
    solve_time_s: float          # QP time of this step, re-solves included
    proposed_twist: np.ndarray   # (6,) reference EE twist (zeros when none)
    safe_twist: np.ndarray       # (6,) J(q) @ dq_cmd
    detail: str = ''             # solver/validation detail behind a fallback
    active: List[str] = field(default_factory=list)  # names of the active barrier groups

    @property
    def message(self) -> str:
        """Status sentence made specific by the active barriers, e.g. 'Close to the table'."""
        if self.status in (FilterStatus.INTERVENED, FilterStatus.SLACK_USED) and self.active:
            kinds = []
            for name in self.active:
                phrase = _KIND_PHRASES.get(name.split(':')[0], name)
                if phrase not in kinds:
                    kinds.append(phrase)
            return (f"{'; '.join(kinds)}, command modified ({', '.join(self.active)})")
        return self.status.message


class SafetyFilter:
    """CBF-QP safety filter for a velocity-controlled arm (pure core, no ROS).

    ``model`` is a :class:`genpolicy_ros.robot.FrankaModel` (or anything with its API),
    ``backend`` ``'daqp'`` or ``'cvxpy'`` (default: ``config.backend``).
    """

    def __init__(self, model, config: SafetyConfig, backend: Optional[str] = None) -> None:
        self.model = model
        self.config = config
        self.dt = config.dt
        self.nq = int(model.nq)
        self.barriers = BarrierSet(model, config)
        self.backend_name = backend or config.backend
        self.backend = make_backend(self.backend_name)
        obj = config.objective
        self.task_weights = np.array([obj.linear_weight] * 3 + [obj.angular_weight] * 3)
        self.q_posture = np.asarray(model.q_home, dtype=float).copy()
        self.a_max = self.barriers.a_max
        self.last_problem: Optional[QPProblem] = None
        self.reset()

    # ------------------------------------------------------------------------- public API
    def reset(self) -> None:
        """Forget the previous command and solver warm start (next step starts from state.dq)."""
        self._dq_prev: Optional[np.ndarray] = None
        self._q_last: Optional[np.ndarray] = None
        self._q_cmd_prev: Optional[np.ndarray] = None
        self.backend.reset()

    def _anchor(self, q: np.ndarray) -> np.ndarray:
        """Return the position the next command integrates from.

        Like MoveIt Servo, commands integrate on the previous *commanded* position, not the
        measured one: a joint controller that sags under load (gravity, contact) would otherwise
        never be asked to make up the error, and the arm would drift. The anchor stays within
        ``position_anchor_tolerance_rad`` of the measurement, so a blocked arm never winds up.
        """
        if self._q_cmd_prev is None:
            return q.copy()
        tol = self.config.position_anchor_tolerance_rad
        return q + np.clip(self._q_cmd_prev - q, -tol, tol)

    def _safe_anchor(self, q: np.ndarray, kin, step: np.ndarray) -> np.ndarray:
        """Return the anchor, pulled back toward ``q`` until ``anchor + step`` keeps the barriers.

        The QP keeps the barriers one step ahead of the *measurement*; a target anchored on a
        previous target can lead a lagging arm past the table, an obstacle or a joint limit, and
        a driver that tracks positions goes there. So the target must not be beyond any hard
        barrier (nor deeper than the arm already is); the anchor's lead is cut back (bisection)
        until it is not. At a barrier this gives up sag compensation, where lagging behind is
        the safe error, and the target moves continuously (no command jump).
        """
        anchor = self._anchor(q)
        offset = anchor - q
        if not np.any(offset):
            return anchor
        bset = self.barriers
        h_floor = np.minimum(bset.nonlinear_values(kin, with_gradient=False)[0], 0.0)
        j_floor = np.minimum(bset.joint_values(q), 0.0)

        def keeps(s: float) -> bool:
            target = q + s * offset + step
            h, _ = bset.nonlinear_values(self.model.kinematics(target), with_gradient=False)
            return bool(np.all(h >= h_floor - _VERIFY_TOL)
                        and np.all(bset.joint_values(target) >= j_floor - _VERIFY_TOL))
        if keeps(1.0):
            return anchor
        lo, hi = 0.0, 1.0   # the plain target (s = 0) is the one the QP verified
        for _ in range(_ANCHOR_BISECTIONS):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if keeps(mid) else (lo, mid)
        return q + lo * offset

    def set_obstacles(self, centers, radii, capsule_starts=None, capsule_ends=None,
                      capsule_radii=None) -> None:
        """Replace the keep-out spheres ``centers`` (K, 3) [m], ``radii`` (K,) [m] and capsules.

        Capsules are segments ``capsule_starts`` -> ``capsule_ends`` (C, 3) with
        ``capsule_radii`` (C,). Raises ``ValueError`` on malformed input (before changing
        anything).
        """
        self.barriers.set_obstacles(centers, radii, capsule_starts, capsule_ends, capsule_radii)
        self.backend.reset()

    def step(self, state: RobotState, reference: Optional[np.ndarray]) -> FilterResult:
        """Return the safe command for ``state`` and the desired EE twist ``reference`` (6,).

        ``reference=None`` means no reference: the filter decelerates to hold while still
        respecting every barrier. Never raises.
        """
        try:
            return self._step(state, reference)
        except Exception as exc:  # the control loop must always get a command
            return self._fallback(FilterStatus.SOLVER_FAILED_FALLBACK, state, reference, None,
                                  f'unexpected error: {exc!r}')

    def step_tracking(self, state: RobotState, tracker: ReferenceTracker,
                      now: Optional[float] = None) -> FilterResult:
        """Run ``tracker`` at ``now`` (default ``state.stamp``) on the measured pose, then step.

        One forward-kinematics pass is shared by the tracker and the filter.
        """
        try:
            q = self._vector(state.q, self.nq)
            kin = self.model.kinematics(q) if q is not None else None
            twist = None
            if kin is not None:
                twist = tracker.desired_twist(state.stamp if now is None else now, kin.ee_pos,
                                              kin.ee_rot)
            return self._step(state, twist, kin)
        except Exception as exc:
            return self._fallback(FilterStatus.SOLVER_FAILED_FALLBACK, state, None, None,
                                  f'unexpected error: {exc!r}')

    def report_names(self) -> Sequence[str]:
        """Names of the barrier reports, in the order :meth:`step` returns them."""
        return self.barriers.group_names()

    # -------------------------------------------------------------------------- internals
    @staticmethod
    def _vector(value, size: int) -> Optional[np.ndarray]:
        try:
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            return None
        if arr.shape != (size,) or not np.all(np.isfinite(arr)):
            return None
        return arr.copy()

    def _step(self, state: RobotState, reference, kin=None) -> FilterResult:
        q = self._vector(getattr(state, 'q', None), self.nq)
        dq = self._vector(getattr(state, 'dq', None), self.nq)
        if q is None or dq is None:
            return self._fallback(FilterStatus.INVALID_INPUT_FALLBACK, state, reference, None,
                                  'state q/dq must be 7 finite numbers')
        invalid_reference = False
        if reference is not None:
            ref = self._vector(reference, 6)
            if ref is None:
                # Stop through the QP, which keeps every barrier, instead of trusting bad data.
                invalid_reference = True
            reference = ref
        if kin is None:
            kin = self.model.kinematics(q)
        dq_prev = dq if self._dq_prev is None else self._dq_prev
        result = self._solve(q, kin, dq_prev, reference, state)
        if invalid_reference and not result.status.is_fallback:
            result.status = FilterStatus.INVALID_INPUT_FALLBACK
            result.detail = 'reference twist must be 6 finite numbers; stopping'
        self._q_last = q
        return result

    def _solve(self, q: np.ndarray, kin, dq_prev: np.ndarray, reference: Optional[np.ndarray],
               state: RobotState) -> FilterResult:
        cfg = self.config
        bset = self.barriers
        nq = self.nq
        jac = np.asarray(kin.ee_jac, dtype=float)
        if reference is None:
            v_des = np.zeros(6)
            posture_weight = 0.0   # with no task, rest is the goal: no null-space drift
            dq_posture = np.zeros(nq)
        else:
            v_des = reference
            posture_weight = cfg.objective.posture_weight
            dq_posture = cfg.objective.posture_gain_per_s * (self.q_posture - q)
        eps = np.full(bset.n_nonlinear + 6, cfg.linearization_margin_m)
        ws_keep = 1.0 - cfg.workspace.gain
        speed_offset = bset.speed_offset
        trust = 1.0
        cap = cfg.speed_cap.max_speed_mps
        ee_pos = np.asarray(kin.ee_pos, dtype=float)
        solve_time = 0.0
        for attempt in range(cfg.max_margin_iterations + 1):
            rows = bset.rows(q, kin, dq_prev, eps, speed_offset, trust)
            if np.any(rows.lb > rows.ub):
                return self._fallback(FilterStatus.INFEASIBLE_FALLBACK, state, reference, kin,
                                      'joint position and velocity limits leave no velocity',
                                      rows=rows, solve_time=solve_time)
            problem = build_problem(jac, v_des, self.task_weights, cfg.objective.damping_weight,
                                    posture_weight, dq_posture, rows, bset.n_slack,
                                    cfg.slack_linear_weight, cfg.slack_quadratic_weight)
            self.last_problem = problem
            sol = self.backend.solve(problem)
            solve_time += sol.solve_time_s
            if sol.status == 'infeasible':
                return self._fallback(FilterStatus.INFEASIBLE_FALLBACK, state, reference, kin,
                                      sol.detail, rows=rows, solve_time=solve_time)
            if sol.status != 'solved':
                return self._fallback(FilterStatus.SOLVER_FAILED_FALLBACK, state, reference, kin,
                                      sol.detail, rows=rows, solve_time=solve_time)
            if solve_time > cfg.solve_time_budget_s:
                return self._fallback(FilterStatus.TIME_BUDGET_FALLBACK, state, reference, kin,
                                      f'{solve_time * 1e6:.0f} us > budget '
                                      f'{cfg.solve_time_budget_s * 1e6:.0f} us',
                                      rows=rows, solve_time=solve_time)
            violation = max_violation(problem, sol.x)
            if violation > cfg.feasibility_tolerance:
                # "Solved" is not proof: the command must satisfy the rows it was asked to.
                return self._fallback(FilterStatus.SOLVER_FAILED_FALLBACK, state, reference, kin,
                                      f'{self.backend_name} returned a command violating a row '
                                      f'by {violation:.2e}', rows=rows, solve_time=solve_time)
            dq_cmd = sol.x[:nq]
            if not cfg.verify_next_state:
                break
            kin_next = self.model.kinematics(q + self.dt * dq_cmd)
            h_next, _ = bset.nonlinear_values(kin_next, with_gradient=False)
            shortfall = np.concatenate([
                (1.0 - rows.gamma) * rows.h - h_next,
                ws_keep * rows.workspace_h - bset.workspace_values(np.asarray(kin_next.ee_pos))])
            if sol.x[nq] > _SLACK_TOL:
                shortfall[bset.n_nonlinear:] = 0.0   # the box was relaxed on purpose
            short = shortfall > _VERIFY_TOL
            # The speed cap bounds J dq; the chord travelled in one step is longer by O(dt).
            chord = float(np.linalg.norm(np.asarray(kin_next.ee_pos) - ee_pos)) / self.dt
            too_fast = chord > cap
            if not np.any(short) and not too_fast:
                break
            if attempt == cfg.max_margin_iterations:
                # Out of re-solves: accept only if no hard barrier goes negative and the cap holds.
                if np.all(h_next >= np.minimum(rows.h, 0.0) - _VERIFY_TOL) and chord <= cap:
                    break
                return self._fallback(FilterStatus.INFEASIBLE_FALLBACK, state, reference, kin,
                                      'linearisation margin could not keep a barrier',
                                      rows=rows, solve_time=solve_time)
            # The first-order model was not good enough: tighten the rows that fell short and
            # shrink the joint velocity trust region (the second-order error grows as |dq|^2).
            eps[short] += 2.0 * shortfall[short]
            if too_fast:
                speed_offset *= (cap - cfg.speed_cap.margin_mps) / chord
            trust = 0.7 * max(np.max(np.abs(dq_cmd) / bset.v_max), 1e-3)
        slack = float(np.sum(sol.x[nq:]))
        if reference is None:
            status = FilterStatus.STALE_REFERENCE
        elif slack > _SLACK_TOL:
            status = FilterStatus.SLACK_USED
        else:
            free = problem.unconstrained_dq()
            changed = np.max(np.abs(dq_cmd - free)) > _CHANGED_TOL * max(1.0, np.max(np.abs(free)))
            status = FilterStatus.INTERVENED if changed else FilterStatus.OK
        reports, active = self._reports(q, kin, rows, problem, sol.x, dq_prev)
        dq_cmd = dq_cmd.copy()
        self._dq_prev = dq_cmd
        q_cmd = self._safe_anchor(q, kin, self.dt * dq_cmd) + self.dt * dq_cmd
        self._q_cmd_prev = q_cmd
        return FilterResult(q_cmd=q_cmd, dq_cmd=dq_cmd, status=status,
                            barriers=reports, slack=slack, solve_time_s=solve_time,
                            proposed_twist=v_des.copy(), safe_twist=jac @ dq_cmd, active=active)

    def _reports(self, q: np.ndarray, kin, rows: BarrierRows, problem: Optional[QPProblem],
                 x: Optional[np.ndarray], dq_prev: np.ndarray,
                 dq_sent: Optional[np.ndarray] = None) -> tuple:
        """Return ``(reports, active names)``; no activity without a solution ``x``.

        Command margins are those of ``x`` or, in a fallback, of the command ``dq_sent``.
        """
        bset = self.barriers
        nq = self.nq
        n_obs = bset.obs_radius.size
        n_sph = bset.sphere_radii.size
        nt = bset.n_table
        obs_h = rows.h[nt:].reshape(n_obs, n_sph).min(axis=1) if n_obs else np.zeros(0)
        dq = x[:nq] if x is not None else (np.zeros(nq) if dq_sent is None else dq_sent)
        speed = float(np.linalg.norm(np.asarray(kin.ee_jac)[:3] @ dq))
        values = np.concatenate([
            rows.h[:nt], obs_h, rows.workspace_h,
            [self.config.speed_cap.max_speed_mps - speed],
            self.a_max * self.dt - np.abs(dq - dq_prev),
            rows.joint_h, bset.v_max - np.abs(dq)])
        n_groups = len(bset.row_group_names)
        active = np.zeros(n_groups + 3 * nq, dtype=bool)
        if x is not None:
            residual = problem.A @ x - problem.b
            row_active = residual <= _ACTIVE_TOL
            active[:n_groups] = np.bincount(bset.group_of_row[row_active],
                                            minlength=n_groups) > 0
            gain = self.config.joint_limits.gain
            h_joint = rows.joint_h
            active[n_groups:n_groups + nq] = dq <= -gain * h_joint[:nq] / self.dt + _ACTIVE_TOL
            active[n_groups + nq:n_groups + 2 * nq] = (
                dq >= gain * h_joint[nq:] / self.dt - _ACTIVE_TOL)
            active[n_groups + 2 * nq:] = np.abs(dq) >= bset.v_max - _ACTIVE_TOL
        names = bset.group_names()
        reports = [BarrierReport(name, float(v), bool(a))
                   for name, v, a in zip(names, values, active)]
        return reports, [name for name, a in zip(names, active) if a]

    def _fallback(self, status: FilterStatus, state, reference, kin, detail: str,
                  rows: Optional[BarrierRows] = None, solve_time: float = 0.0) -> FilterResult:
        """Decelerate toward rest within the acceleration limits (then hold); never raises.

        The speed cap stays hard here too: if slowing down along the current joint direction
        still leaves the TCP above the cap at this configuration, the command is scaled down to
        the cap even if that decelerates harder than ``acceleration.scale`` allows.
        """
        nq = self.nq
        q = self._vector(getattr(state, 'q', None), nq)
        if q is None:
            q = self._q_last
        dq_from = self._dq_prev
        if dq_from is None:
            dq_from = self._vector(getattr(state, 'dq', None), nq)
        if dq_from is None:
            dq_from = np.zeros(nq)
        if q is None:
            # Never seen a valid position: the only defined command is zero velocity; the
            # position target is unknown (NaN) and must not be used by a driver.
            q_cmd, dq_cmd = np.full(nq, np.nan), np.zeros(nq)
        else:
            base = self._anchor(q)
            q_cmd, dq_cmd = decelerate(base, dq_from, self.a_max, self.dt)
            try:
                if kin is None:
                    kin = self.model.kinematics(q)
                base = self._safe_anchor(q, kin, q_cmd - base)
                q_cmd, dq_cmd = decelerate(base, dq_from, self.a_max, self.dt)
                speed = float(np.linalg.norm(np.asarray(kin.ee_jac)[:3] @ dq_cmd))
                limit = self.config.speed_cap.max_speed_mps - self.config.speed_cap.margin_mps
                if speed > limit:
                    dq_cmd = dq_cmd * (limit / speed)
                    q_cmd = base + 0.5 * (dq_from + dq_cmd) * self.dt
            except Exception as exc:  # no kinematics: the plain stopping law is all we have
                detail = f'{detail}; speed cap not checked: {exc!r}'
            self._q_last = q
            self._q_cmd_prev = q_cmd
        self._dq_prev = dq_cmd
        proposed = self._vector(reference, 6) if reference is not None else None
        reports: List[BarrierReport] = []
        safe_twist = np.zeros(6)
        try:
            if kin is None and q is not None:
                kin = self.model.kinematics(q)
            if kin is not None:
                safe_twist = np.asarray(kin.ee_jac) @ dq_cmd
                if rows is None:
                    rows = self.barriers.rows(q, kin, dq_from)
                reports, _ = self._reports(q, kin, rows, None, None, dq_from, dq_cmd)
        except Exception as exc:  # reporting must not turn a fallback into a crash
            detail = f'{detail}; barrier report unavailable: {exc!r}'
        return FilterResult(q_cmd=q_cmd, dq_cmd=dq_cmd, status=status, barriers=reports,
                            slack=0.0, solve_time_s=solve_time,
                            proposed_twist=np.zeros(6) if proposed is None else proposed,
                            safe_twist=safe_twist, detail=detail)
