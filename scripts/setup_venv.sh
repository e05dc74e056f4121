#!/usr/bin/env bash
# Create (or reuse) .venv/ at the repository root with everything genpolicy_ros needs:
# ROS 2 (kilted) from wheels, torch (CPU build, pinned), PyBullet, Pinocchio, QP solvers, ...
# Idempotent: re-running only reinstalls when requirements, constraints or setup.py changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
if [ -z "$PY" ]; then echo "setup: no python3 found" >&2; exit 1; fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

# franka-sim (the FCI simulator the Franka driver is tested against) in a virtualenv of its own;
# if it cannot be installed, only those protocol tests skip, saying why.
bash scripts/setup_franka_sim_venv.sh || echo "setup: continuing without franka-sim" >&2

stamp=.venv/.genpolicy-installed
want=$(cat requirements.txt requirements-dev.txt constraints.txt setup.py \
  requirements-franka-sim.txt constraints-franka-sim.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: .venv is up to date"
  exit 0
fi

echo "setup: installing pinned dependencies into .venv (first run takes a few minutes)"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements-dev.txt -c constraints.txt
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
# Upstream launch/launch_ros wheels, when the workplace provides them (not on any registry):
# they let the launch tests run for real instead of skipping.
launch_wheels=../shared/wheels/ros2-launch
if [ -d "$launch_wheels" ] && ls "$launch_wheels"/*.whl >/dev/null 2>&1; then
  echo "setup: installing launch/launch_ros wheels from $launch_wheels"
  .venv/bin/python -m pip install --quiet --no-index --find-links "$launch_wheels" \
    "$launch_wheels"/*.whl
fi
echo "$want" > "$stamp"
echo "setup: done"
