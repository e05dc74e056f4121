#!/usr/bin/env bash
# Goal-input policies g1-g3 (not shipped unless README says so): policy v3 given the task's goal
# xy as input (genpolicy-train --add-goal-input), then two DAgger rounds with the new policy
# driving behind the CBF filter and the scripted expert labelling. Exactly the commands used.
# Needs data/demos/push_v1 and push_filter_v1 (README, "Evaluate, train, calibrate").
# Here (2 idle cores): g1 training 18 min, each DAgger round 10 min, g2/g3 training 12 min each.
# Usage: nohup scripts/train_goal.sh > runs/goal.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs
PY=${PYTHON:-.venv/bin/python}
export_ckpt() { $PY -m genpolicy_ros.policy.checkpoint "runs/$1/checkpoint.pt" "runs/$1/export.pt"; }
$PY -m genpolicy_ros.policy.train --demos data/demos/push_v1 data/demos/push_filter_v1 \
    --out runs/goal_g1 --init-from checkpoints/push_flow_v3.pt --add-goal-input \
    --iters 6000 --learning-rate 0.0002 --batch-size 64 --seed 11 --threads 2 --resume
export_ckpt goal_g1
[ -f data/demos/push_dagger_goal1/meta.json ] || $PY -m genpolicy_ros.policy.collect \
    --driver policy --checkpoint runs/goal_g1/export.pt --episodes 300 --seed 90000 \
    --out data/demos/push_dagger_goal1 --workers 2
$PY -m genpolicy_ros.policy.train --demos data/demos/push_v1 data/demos/push_filter_v1 \
    data/demos/push_dagger_goal1 --out runs/goal_g2 --init-from runs/goal_g1/checkpoint.pt \
    --iters 4000 --learning-rate 0.0001 --batch-size 64 --seed 12 --threads 2 --resume
export_ckpt goal_g2
[ -f data/demos/push_dagger_goal2/meta.json ] || $PY -m genpolicy_ros.policy.collect \
    --driver policy --checkpoint runs/goal_g2/export.pt --episodes 300 --seed 91000 \
    --out data/demos/push_dagger_goal2 --workers 2
$PY -m genpolicy_ros.policy.train --demos data/demos/push_v1 data/demos/push_filter_v1 \
    data/demos/push_dagger_goal1 data/demos/push_dagger_goal2 --out runs/goal_g3 \
    --init-from runs/goal_g2/checkpoint.pt \
    --iters 4000 --learning-rate 0.0001 --batch-size 64 --seed 13 --threads 2 --resume
export_ckpt goal_g3
