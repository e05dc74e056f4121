#!/usr/bin/env bash
# Make policy v3 (checkpoints/push_flow_v3.pt) from v2 by one more DAgger round: v2 drives behind
# the CBF filter, the scripted expert labels every visited state, then v2 is fine-tuned on all
# data so far. Exactly the commands used.
# Then export: python -m genpolicy_ros.policy.checkpoint runs/push_flow_v3/checkpoint.pt \
#                  checkpoints/push_flow_v3.pt
# and recalibrate the monitor for it: genpolicy-calibrate --episodes 40 --feature-demos \
#     data/demos/push_v1 data/demos/push_filter_v1 data/demos/push_dagger_v1 data/demos/push_dagger_v2
# Here (2 loaded cores): collection 44 min (v2 succeeded in 51% of the 300 episodes), training
# 50 min.
# Labels from the modal expert: set expert.kind: modal in config/sim.yaml to repeat this.
# Usage: nohup scripts/train_dagger_v3.sh > runs/push_flow_v3.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs
[ -f data/demos/push_dagger_v2/meta.json ] || python -m genpolicy_ros.policy.collect \
    --driver policy --checkpoint push_flow_v2.pt --episodes 300 --seed 40000 \
    --out data/demos/push_dagger_v2 --workers 2
python -m genpolicy_ros.policy.train \
    --demos data/demos/push_v1 data/demos/push_filter_v1 data/demos/push_dagger_v1 \
    data/demos/push_dagger_v2 \
    --out runs/push_flow_v3 --init-from runs/push_flow_v2/checkpoint.pt \
    --iters 4000 --learning-rate 0.0001 --batch-size 64 --seed 2 --threads 1 --resume
