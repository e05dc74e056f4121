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
# One DAgger round: policy $1 drives (300 episodes from seed $2, set $3), then $4 is trained
# from $1 on every set so far plus $3 (4000 iterations, lr 1e-4, training seed $5).
dagger_round() {
    [ -f "data/demos/$3/meta.json" ] || $PY -m genpolicy_ros.policy.collect \
        --driver policy --checkpoint "runs/$1/export.pt" --episodes 300 --seed "$2" \
        --out "data/demos/$3" --workers 2
    SETS+=("data/demos/$3")
    $PY -m genpolicy_ros.policy.train --demos "${SETS[@]}" --out "runs/$4" \
        --init-from "runs/$1/checkpoint.pt" \
        --iters 4000 --learning-rate 0.0001 --batch-size 64 --seed "$5" --threads 2 --resume
    export_ckpt "$4"
}
SETS=(data/demos/push_v1 data/demos/push_filter_v1)
dagger_round goal_g1 90000 push_dagger_goal1 goal_g2 12
dagger_round goal_g2 91000 push_dagger_goal2 goal_g3 13
