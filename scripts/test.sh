#!/usr/bin/env bash
# Install everything (see setup_venv.sh) and run the default test suite (lint included).
# Long training/evaluation jobs are marked `slow` and excluded here; run them with
#   .venv/bin/python -m pytest -m slow
# The fast subset of the fault-injection suite runs last; all of it (`fault_full` too) with
#   .venv/bin/python -m pytest test/fault_injection -m fault_injection
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export QT_QPA_PLATFORM=offscreen
# A private DDS domain per run keeps concurrent test runs on one machine from hearing each other.
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( ($$ % 100) + 100 ))}
exec .venv/bin/python -m pytest "$@"
