"""The one CBF-QP formulation shared by every backend, and the feasibility check of answers.

Decision variable ``x = [dq (nq); s (ns)]``: joint velocities [rad/s] and the slacks of the soft
rows (one shared by the workspace faces, one by the acceleration bounds)::

    minimise   0.5 x'Hx + f'x
               = 0.5 ||J dq - v_des||^2_W + 0.5 damping ||dq||^2
                 + 0.5 posture ||P (dq - dq_posture)||^2 + w1 sum(s) + 0.5 w2 ||s||^2
    subject to A x >= b          (barrier rows, slack columns on soft rows)
               lb <= x <= ub     (joint position/velocity limits on dq, s >= 0)

``P = I - J'(JJ' + rho I)^-1 J`` is the (damped) null-space projector, so the posture term only
uses motion the task does not need. The linear slack weight ``w1`` makes the penalty exact: as
long as it exceeds the constraint multipliers, slack stays exactly zero whenever the hard rows
allow it. Backends only ever see a :class:`QPProblem`; they never build matrices themselves.
"""

from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np

from genpolicy_ros.safety.barriers import BarrierRows

_NULLSPACE_DAMPING = 1e-6


@dataclass
class QPProblem:
    """``min 0.5 x'Hx + f'x  s.t.  A x >= b,  lb <= x <= ub`` with ``x = [dq; s]``."""

    H: np.ndarray   # (n, n) symmetric positive definite
    f: np.ndarray   # (n,)
    A: np.ndarray   # (m, n)
    b: np.ndarray   # (m,)
    lb: np.ndarray  # (n,) finite
    ub: np.ndarray  # (n,) +inf on slacks
    nq: int

    @property
    def n(self) -> int:
        """Number of decision variables."""
        return self.H.shape[0]

    def unconstrained_dq(self) -> np.ndarray:
        """Return the joint-velocity part of the unconstrained optimum (resolved rate)."""
        nq = self.nq
        return np.linalg.solve(self.H[:nq, :nq], -self.f[:nq])


@dataclass
class QPSolution:
    """What a backend returns. ``status`` is 'solved', 'infeasible' or 'failed'."""

    x: Optional[np.ndarray]
    status: str
    solve_time_s: float
    detail: str = ''


class QPBackend(Protocol):
    """A QP solver for :class:`QPProblem`; must never raise on a bad problem."""

    name: str

    def solve(self, problem: QPProblem) -> QPSolution:
        """Solve ``problem``; report infeasibility/failure through ``QPSolution.status``."""

    def reset(self) -> None:
        """Forget warm-start information (after a layout change or a reset)."""


def build_problem(jac: np.ndarray, v_des: np.ndarray, weights: np.ndarray, damping: float,
                  posture_weight: float, dq_posture: np.ndarray, rows: BarrierRows,
                  n_slack: int, slack_linear: float, slack_quadratic: float) -> QPProblem:
    """Assemble the QP of the module docstring from the Jacobian, reference and barrier rows.

    ``jac`` (6, nq) EE Jacobian [linear; angular], ``v_des`` (6,) desired twist, ``weights``
    (6,) the diagonal of W, ``dq_posture`` (nq,) posture velocity (zero to disable).
    """
    nq = jac.shape[1]
    n = nq + n_slack
    jw = jac.T * weights                         # J' W
    Hq = jw @ jac + damping * np.eye(nq)
    fq = -(jw @ v_des)
    if posture_weight > 0.0:
        gram = jac @ jac.T + _NULLSPACE_DAMPING * np.eye(jac.shape[0])
        proj = np.eye(nq) - jac.T @ np.linalg.solve(gram, jac)
        proj = 0.5 * (proj + proj.T)
        Hq += posture_weight * proj
        fq -= posture_weight * (proj @ dq_posture)
    H = np.zeros((n, n))
    H[:nq, :nq] = 0.5 * (Hq + Hq.T)
    H[nq:, nq:] = slack_quadratic * np.eye(n_slack)
    f = np.concatenate([fq, np.full(n_slack, slack_linear)])
    m = rows.A.shape[0]
    A = np.zeros((m, n))
    A[:, :nq] = rows.A
    soft = rows.slack_index >= 0
    A[np.nonzero(soft)[0], nq + rows.slack_index[soft]] = 1.0
    lb = np.concatenate([rows.lb, np.zeros(n_slack)])
    ub = np.concatenate([rows.ub, np.full(n_slack, np.inf)])
    return QPProblem(H=H, f=f, A=A, b=rows.b.copy(), lb=lb, ub=ub, nq=nq)


def max_violation(problem: QPProblem, x: np.ndarray) -> float:
    """Return the largest violation of any row or bound by ``x`` (0 when feasible)."""
    if x is None or x.shape != (problem.n,) or not np.all(np.isfinite(x)):
        return float('inf')
    viol = 0.0
    if problem.A.shape[0]:
        viol = max(viol, float(np.max(problem.b - problem.A @ x)))
    viol = max(viol, float(np.max(problem.lb - x)), float(np.max(x - problem.ub)))
    return max(viol, 0.0)


def make_backend(name: str, **options) -> QPBackend:
    """Return a backend by name: ``'daqp'`` (fast default) or ``'cvxpy'`` (reference)."""
    if name == 'daqp':
        from genpolicy_ros.safety.backend_daqp import DaqpBackend
        return DaqpBackend(**options)
    if name == 'cvxpy':
        from genpolicy_ros.safety.backend_cvxpy import CvxpyBackend
        return CvxpyBackend(**options)
    raise ValueError(f"unknown QP backend {name!r} (expected 'daqp' or 'cvxpy')")
