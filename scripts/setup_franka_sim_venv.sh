#!/usr/bin/env bash
# Create (or reuse) .venv-franka-sim/ at the repository root: franka-sim, the libfranka FCI
# protocol simulator the Franka driver is tested against. A virtualenv of its own: franka-sim
# pins numpy 1.26 and mujoco < 3.3, which the project's .venv cannot share.
# Idempotent: reinstalls only when requirements-franka-sim.txt or constraints-franka-sim.txt
# changed. On failure the reason is in .venv-franka-sim.log and the exit status is non-zero;
# setup_venv.sh goes on, and the protocol tests skip saying franka-sim is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
if [ -z "$PY" ]; then echo "setup: no python3 found" >&2; exit 1; fi

venv=.venv-franka-sim
log=.venv-franka-sim.log
stamp=$venv/.genpolicy-installed
want=$(cat requirements-franka-sim.txt constraints-franka-sim.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: $venv is up to date"
  exit 0
fi

echo "setup: installing franka-sim into $venv (log: $log)"
rm -f "$stamp"
if ! {
  if [ ! -x "$venv/bin/python" ]; then "$PY" -m venv "$venv"; fi
  "$venv/bin/python" -m pip install --quiet -r requirements-franka-sim.txt \
    -c constraints-franka-sim.txt
  "$venv/bin/python" -c "import franka_sim, mujoco, numpy"
} >"$log" 2>&1; then
  echo "setup: franka-sim could not be installed (see $log):" >&2
  tail -n 5 "$log" >&2
  exit 1
fi
echo "$want" > "$stamp"
echo "setup: $venv done"
