"""A process pool whose workers each build one long-lived object (e.g. a lock-step stack).

Building a PyBullet world, the robot model and a policy takes seconds, so every worker builds
its object once (``factory(*args)``) and then runs many tasks on it (``obj.run(task)``). Used
by ``genpolicy-collect`` (one episode per task) and ``genpolicy-finetune`` (rollouts). Workers
are *spawned* (a fresh interpreter: PyBullet and torch do not survive a fork well);
``workers <= 1`` runs everything in the calling process, which tests and debuggers prefer.
"""

import multiprocessing as mp
from typing import Any, Callable, Iterable, Iterator, Optional

_WORKER: Any = None


def _init_worker(factory: Callable[..., Any], args: tuple) -> None:
    global _WORKER
    _WORKER = factory(*args)


def _run_task(task: Any) -> Any:
    if _WORKER is None:
        raise RuntimeError('worker object was not built (pool initialiser failed?)')
    return _WORKER.run(task)


class WorkerPool:
    """``with WorkerPool(Factory, args, workers) as pool: for r in pool.imap(tasks): ...``.

    ``factory`` must be importable by name (a module-level class or function) and its
    product must have ``run(task)``. Results come back in task order (:meth:`imap`) or as
    they finish (:meth:`imap_unordered`).
    """

    def __init__(self, factory: Callable[..., Any], args: tuple = (), workers: int = 1) -> None:
        self.workers = max(1, int(workers))
        self._pool: Optional[Any] = None
        self._local: Any = None
        if self.workers == 1:
            self._local = factory(*args)
        else:
            self._pool = mp.get_context('spawn').Pool(self.workers, _init_worker,
                                                      (factory, args))

    @property
    def local(self) -> Any:
        """The in-process worker object (``workers <= 1``), else None."""
        return self._local

    def imap(self, tasks: Iterable[Any]) -> Iterator[Any]:
        """Run ``tasks``; yield results in task order."""
        if self._pool is None:
            return (self._local.run(t) for t in tasks)
        return self._pool.imap(_run_task, tasks)

    def imap_unordered(self, tasks: Iterable[Any]) -> Iterator[Any]:
        """Run ``tasks``; yield results as they finish."""
        if self._pool is None:
            return (self._local.run(t) for t in tasks)
        return self._pool.imap_unordered(_run_task, tasks)

    def terminate(self) -> None:
        """Stop the workers now (pending tasks are dropped)."""
        if self._pool is not None:
            self._pool.terminate()

    def close(self) -> None:
        """Let the workers finish and release them; close the local object if it can."""
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None
        if self._local is not None and hasattr(self._local, 'close'):
            self._local.close()
            self._local = None

    def __enter__(self) -> 'WorkerPool':
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.terminate()
        self.close()
