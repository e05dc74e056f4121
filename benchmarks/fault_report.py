"""Run the fault-injection suite and tabulate what the arm did in every scenario.

The full set (the command this script runs)::

    .venv/bin/python -m pytest test/fault_injection -m fault_injection

``--fast`` runs only the subset of the default test run (``-m "fault_injection and not
fault_full"``). Each test records the arm's behaviour through the suite's ``scenario`` fixture
into a JSON-lines file (``FI_RESULTS``); this script prints one row per scenario: outcome, time
from the input's timeout to the hold, largest measured EE speed, smallest hard barrier (table,
obstacles [m], joint limits [rad]; margins included, so below 0 means into the margin) and the
deepest table/obstacle penetration into the margin. The last line is machine-readable::

    scenarios=<n> passed=<m> violations=<count> max_penetration_mm=<float>

``violations`` counts joint-state samples, over all scenarios, where the arm went through what
the margins protect (a surface or a joint limit) or above the speed cap. Targets: every
scenario passes, violations = 0; the hold target is 100 ms after the timeout (``hold`` column).
"""

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
HOLD_TARGET_S = 0.1


def run_suite(fast: bool, extra: List[str], results: Path) -> int:
    """Run pytest on the suite with results going to ``results``; return its exit code."""
    marker = 'fault_injection and not fault_full' if fast else 'fault_injection'
    cmd = [sys.executable, '-m', 'pytest', 'test/fault_injection', '-m', marker,
           '-p', 'no:cacheprovider', '-q', '-rN'] + extra
    print('running: ' + ' '.join(cmd[1:]), flush=True)
    env = dict(os.environ, FI_RESULTS=str(results))
    return subprocess.call(cmd, cwd=REPO, env=env)


def load(results: Path) -> Dict[str, dict]:
    """Return ``{nodeid: {'outcome': ..., 'metrics': {...}}}`` from the JSON-lines file."""
    rows: Dict[str, dict] = {}
    if not results.exists():
        return rows
    for line in results.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        row = rows.setdefault(rec['nodeid'], {'outcome': 'not run', 'metrics': {}})
        if 'outcome' in rec:
            row['outcome'] = rec['outcome']
            row['duration_s'] = rec.get('duration_s')
        if 'metrics' in rec:
            row['metrics'].update(rec['metrics'])
    return rows


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    if value is None:
        return '-'
    try:
        v = float(value) * scale
    except (TypeError, ValueError):
        return str(value)
    if v != v or v in (float('inf'), float('-inf')):
        return 'never' if v == float('inf') else '-'
    return format(v, spec)


def table(rows: Dict[str, dict]) -> List[str]:
    """Return the report lines (header and one row per scenario)."""
    head = (f'{"scenario":<78} {"outcome":<8} {"hold_ms":>8} {"hold":>5} {"speed":>7} '
            f'{"cmd_spd":>7} {"min_barrier":>11} {"pen_mm":>7} {"viol":>5}')
    lines = [head, '-' * len(head)]
    for nodeid, row in rows.items():
        m = row['metrics']
        name = nodeid.split('::', 1)[-1]
        tth = m.get('time_to_hold_s')
        ok = '-' if tth is None else ('yes' if float(tth) <= HOLD_TARGET_S else 'no')
        lines.append(
            f'{name[:78]:<78} {row["outcome"]:<8} {_fmt(tth, ".0f", 1e3):>8} {ok:>5} '
            f'{_fmt(m.get("max_speed_mps"), ".3f"):>7} '
            f'{_fmt(m.get("max_commanded_speed_mps"), ".3f"):>7} '
            f'{_fmt(m.get("min_barrier"), "+.4f"):>11} {_fmt(m.get("penetration_mm"), ".2f"):>7} '
            f'{_fmt(m.get("violations"), ".0f"):>5}')
    return lines


def summary(rows: Dict[str, dict]) -> str:
    """Return the machine-readable last line."""
    passed = sum(r['outcome'] == 'passed' for r in rows.values())
    violations = sum(int(r['metrics'].get('violations') or 0) for r in rows.values())
    pens = [float(r['metrics']['penetration_mm']) for r in rows.values()
            if r['metrics'].get('penetration_mm') is not None]
    return (f'scenarios={len(rows)} passed={passed} violations={violations} '
            f'max_penetration_mm={max(pens, default=0.0):.3f}')


def main(argv=None) -> int:
    """Entry point: run the suite (or read a results file) and print the report."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--fast', action='store_true', help='only the default-run subset')
    p.add_argument('--results', default='',
                   help='read this JSON-lines file instead of running the suite')
    p.add_argument('pytest_args', nargs='*', help='extra pytest arguments (e.g. -k kill9)')
    args = p.parse_args(argv)
    started = time.monotonic()
    code = 0
    if args.results:
        results = Path(args.results)
    else:
        results = Path(tempfile.mkdtemp(prefix='fault_report_')) / 'results.jsonl'
        code = run_suite(args.fast, args.pytest_args, results)
    rows = load(results)
    print('\n'.join(table(rows)))
    print(f'results: {results}; {time.monotonic() - started:.0f} s; pytest exit code {code}')
    print(summary(rows), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
