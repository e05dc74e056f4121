"""Fast default QP backend: DAQP, an exact dual active-set solver.

Control-loop QPs change little from one step to the next, so the previous optimal active set is
the starting working set of the next solve; DAQP then usually needs zero or one
pivot. The workspace is allocated once per problem size and reused (``daqp.Model``); an update
without ``sense`` keeps the previous working set.
"""

import time
from typing import Optional

import daqp
import numpy as np

from genpolicy_ros.safety.qp import QPProblem, QPSolution

_INF = 1e30               # DAQP's "no bound"
_EXIT_INFEASIBLE = (-1,)  # primal infeasible
_EXIT_OK = (1, 2)         # optimal / soft-optimal


class DaqpBackend:
    """DAQP with a warm-started working set and a reused workspace."""

    name = 'daqp'

    def __init__(self, warm_start: bool = True, iter_limit: int = 1000) -> None:
        self.warm_start = warm_start
        self.iter_limit = iter_limit
        self.reset()

    def reset(self) -> None:
        """Forget the working set and the workspace (next solve sets up from scratch)."""
        self._model: Optional[daqp.Model] = None
        self._shape = None

    def solve(self, problem: QPProblem) -> QPSolution:
        """Solve ``problem``; never raises."""
        start = time.perf_counter()
        try:
            return self._solve(problem, start)
        except Exception as exc:  # a solver error is a status, not a crash of the control loop
            self.reset()
            return QPSolution(None, 'failed', time.perf_counter() - start, f'daqp: {exc!r}')

    def _solve(self, problem: QPProblem, start: float) -> QPSolution:
        n, m = problem.n, problem.A.shape[0]
        H = np.ascontiguousarray(problem.H)
        f = np.ascontiguousarray(problem.f)
        A = np.ascontiguousarray(problem.A)
        if self._model is None or self._shape != (n, m):
            # Bounds first, then rows (DAQP's layout); row upper bounds are always "none".
            self._bupper = np.full(n + m, _INF)
            self._blower = np.empty(n + m)
        bupper, blower = self._bupper, self._blower
        np.minimum(problem.ub, _INF, out=bupper[:n])
        blower[:n] = problem.lb
        blower[n:] = problem.b
        if self._model is None or self._shape != (n, m):
            self._model = daqp.Model()
            self._model.setup(H, f, A, bupper, blower, np.zeros(n + m, dtype=np.int32))
            self._model.settings = {'iter_limit': self.iter_limit}
            self._shape = (n, m)
        elif self.warm_start:
            # Without ``sense`` DAQP keeps the working set of the previous solve (warm start).
            self._model.update(H=H, f=f, A=A, bupper=bupper, blower=blower)
        else:
            self._model.update(H=H, f=f, A=A, bupper=bupper, blower=blower,
                               sense=np.zeros(n + m, dtype=np.int32))
        x, _, exitflag, _ = self._model.solve()
        elapsed = time.perf_counter() - start
        if exitflag in _EXIT_OK:
            return QPSolution(np.array(x, dtype=float), 'solved', elapsed)
        # A failed solve leaves a working set not worth starting from.
        self.reset()
        status = 'infeasible' if exitflag in _EXIT_INFEASIBLE else 'failed'
        return QPSolution(None, status, elapsed, f'daqp exitflag {exitflag}')
