#!/usr/bin/env bash
# Install everything (see setup_venv.sh) and run the main job: the headless PyBullet demo of the
# whole ROS 2 graph (sim -> policy -> safety filter -> monitor -> sim) with the shipped policy.
# Extra arguments go to genpolicy-sim (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( ($$ % 100) + 100 ))}
exec .venv/bin/genpolicy-sim "$@"
