"""Reference QP backend: the same :class:`QPProblem` written plainly in cvxpy, solved by Clarabel.

It is the oracle the tests compare the fast backend with, so it favours readability and accuracy
over speed. The problem is DPP-parametrised and built once per problem size; each solve only
writes parameter values (the Hessian enters through its Cholesky factor, ``x'Hx = ||L'x||^2``).
"""

import time
from typing import Optional

import cvxpy as cp
import numpy as np

from genpolicy_ros.safety.qp import QPProblem, QPSolution

# Tight tolerances and little static regularisation: with Clarabel's defaults the answer can be
# off by ~1e-4 rad/s along weakly penalised (null-space) directions, too loose for an oracle.
# Extra iterative refinement lets it actually reach those tolerances (else "optimal_inaccurate").
_CLARABEL_OPTIONS = dict(tol_gap_abs=1e-14, tol_gap_rel=1e-14, tol_feas=1e-12, tol_ktratio=1e-12,
                         max_iter=500, static_regularization_constant=1e-12,
                         iterative_refinement_reltol=1e-16, iterative_refinement_abstol=1e-16,
                         iterative_refinement_max_iter=50)


class CvxpyBackend:
    """cvxpy + Clarabel on a parametrised copy of the problem."""

    name = 'cvxpy'

    def __init__(self, solver: str = 'CLARABEL') -> None:
        self.solver = solver
        self.reset()

    def reset(self) -> None:
        """Drop the compiled problem (rebuilt on the next solve)."""
        self._shape = None
        self._problem: Optional[cp.Problem] = None

    def _build(self, n: int, m: int, nq: int) -> None:
        self._x = cp.Variable(n)
        self._factor = cp.Parameter((n, n))   # L' with H = L L'
        self._f = cp.Parameter(n)
        self._A = cp.Parameter((m, n))
        self._b = cp.Parameter(m)
        self._lb = cp.Parameter(n)
        self._ub = cp.Parameter(nq)           # slacks have no upper bound
        x = self._x
        objective = cp.Minimize(0.5 * cp.sum_squares(self._factor @ x) + self._f @ x)
        constraints = [self._A @ x >= self._b, x >= self._lb, x[:nq] <= self._ub]
        self._problem = cp.Problem(objective, constraints)
        self._shape = (n, m, nq)

    def solve(self, problem: QPProblem) -> QPSolution:
        """Solve ``problem``; never raises."""
        start = time.perf_counter()
        try:
            shape = (problem.n, problem.A.shape[0], problem.nq)
            if self._shape != shape:
                self._build(*shape)
            self._factor.value = np.linalg.cholesky(problem.H).T
            self._f.value = problem.f
            self._A.value = problem.A
            self._b.value = problem.b
            self._lb.value = problem.lb
            self._ub.value = problem.ub[:problem.nq]
            options = _CLARABEL_OPTIONS if self.solver == 'CLARABEL' else {}
            self._problem.solve(solver=self.solver, **options)
        except Exception as exc:  # includes cp.SolverError and a non-PD Hessian
            return QPSolution(None, 'failed', time.perf_counter() - start, f'cvxpy: {exc!r}')
        elapsed = time.perf_counter() - start
        status = self._problem.status
        if status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) and self._x.value is not None:
            return QPSolution(np.array(self._x.value, dtype=float), 'solved', elapsed, status)
        if status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
            return QPSolution(None, 'infeasible', elapsed, status)
        return QPSolution(None, 'failed', elapsed, f'cvxpy status {status}')

    @property
    def is_dpp(self) -> bool:
        """Whether the built problem is DPP (parameter changes skip canonicalisation)."""
        return self._problem is not None and self._problem.is_dpp()
