#!/usr/bin/env bash
# Goal-input policies g1-g3 (not shipped unless README says so): policy v3 given the task's goal
# xy as input (genpolicy-train --add-goal-input), then two DAgger rounds with the new policy
# driving behind the CBF filter and the scripted expert labelling. Exactly the commands used.
# Needs data/demos/push_v1 and push_filter_v1 (README, "Evaluate, train, calibrate"). Its DAgger
# labels came from the modal expert: set expert.kind: modal in config/sim.yaml to repeat it.
# Here (2 idle cores): g1 training 18 min, each DAgger round 10 min, g2/g3 training 12 min each.
# Usage: nohup scripts/train_goal.sh > runs/goal.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs
PY=${PYTHON:-.venv/bin/python}
# shellcheck source=dagger_lib.sh
source scripts/dagger_lib.sh
$PY -m genpolicy_ros.policy.train --demos data/demos/push_v1 data/demos/push_filter_v1 \
    --out runs/goal_g1 --init-from checkpoints/push_flow_v3.pt --add-goal-input \
    --iters 6000 --learning-rate 0.0002 --batch-size 64 --seed 11 --threads 2 --resume
export_ckpt goal_g1
SETS=(data/demos/push_v1 data/demos/push_filter_v1)
dagger_round goal_g1 90000 push_dagger_goal1 goal_g2 12
dagger_round goal_g2 91000 push_dagger_goal2 goal_g3 13
