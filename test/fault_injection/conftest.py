"""Fixtures of the fault-injection suite: one attacked graph for it, recovered per test.

Every test here is marked ``fault_injection``; the long ones also ``fault_full``, which the
default run leaves out (``setup.cfg``). The whole suite::

    .venv/bin/python -m pytest test/fault_injection -m fault_injection

``benchmarks/fault_report.py`` runs exactly that and tabulates the results each test records
through the ``scenario`` fixture (``FI_RESULTS`` names the JSON-lines file).
"""

import json
import os
from pathlib import Path
import sys
import time
from typing import Any, Dict, Iterator, Optional

import pytest

# The suite's helpers are imported as top-level modules (also by benchmarks/). Appended, not
# prepended: ``import conftest`` elsewhere must keep finding test/conftest.py.
sys.path.append(str(Path(__file__).resolve().parent))

from fi_graph import ArmReport, claim_domain, FaultGraph  # noqa: E402

RESULTS_ENV = 'FI_RESULTS'
# Domains 200-229: the rest of the suite uses 100-199 (test/conftest.py), and the graph's nodes
# share names and topics with the node tests, so the two must never hear each other. Two runs
# of the suite on one machine (CI and a developer) must not either: a domain is claimed with a
# lock file held for the session.
DOMAINS = range(200, 230)


def _append(record: Dict[str, Any]) -> None:
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, 'a', encoding='utf-8') as f:
            f.write(json.dumps(record) + '\n')


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Record every fault-injection test's outcome for the fault report."""
    if 'fault_injection' not in report.keywords:
        return
    if report.when == 'call' or (report.when == 'setup' and report.outcome != 'passed'):
        _append({'nodeid': report.nodeid, 'outcome': report.outcome,
                 'duration_s': round(report.duration, 2)})


class Scenario:
    """What a test records about its scenario for the fault report (and asserts on)."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self.metrics: Dict[str, Any] = {}

    def record(self, report: Optional[ArmReport] = None, **metrics: Any) -> None:
        """Record the arm's report over the scenario and any extra metrics (time_to_hold_s...)."""
        if report is not None:
            self.metrics.update(report.as_dict())
        self.metrics.update(metrics)


@pytest.fixture
def scenario(request) -> Iterator[Scenario]:
    """Collect a test's metrics; written to ``$FI_RESULTS`` whatever the outcome."""
    sc = Scenario(request.node.nodeid)
    yield sc
    if sc.metrics:
        _append({'nodeid': sc.nodeid, 'metrics': sc.metrics})


@pytest.fixture(scope='package')
def fault_graph(tmp_path_factory) -> Iterator[FaultGraph]:
    """Start the attacked graph once for this package (node processes on a private domain).

    Package scope: it ends with the suite's last test, not with the session, so its processes
    never load the machine for tests that run after it.
    """
    log_dir = Path(tmp_path_factory.mktemp('fault_graph'))
    domain, lock = claim_domain(DOMAINS)
    graph = FaultGraph(log_dir, domain)
    try:
        graph.start()
        yield graph
    finally:
        graph.close()
        lock.close()


@pytest.fixture
def graph(fault_graph: FaultGraph) -> Iterator[FaultGraph]:
    """Return the graph recovered to nominal: all nodes up, no faults, monitor NOMINAL."""
    fault_graph.recover()
    started = time.monotonic()
    yield fault_graph
    fault_graph.clear_faults()
    if time.monotonic() - started > 120.0:
        fault_graph.observer.forget_before(fault_graph.now() - 5.0)
