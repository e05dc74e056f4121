#!/usr/bin/env bash
# Make the shipped policy v2 (checkpoints/push_flow_v2.pt) from v1: collect data where the policy
# runs (behind the CBF filter), then fine-tune v1 on old + new data. Exactly the commands used.
# Labels from the modal expert: set expert.kind: modal in config/sim.yaml to repeat this.
#
# 1. 300 scripted-expert episodes through the lock-step stack (filter in the loop), DART noise
#    1 cm on the executed target, clean expert labels (training seeds 20000+).
# 2. 200 DAgger episodes: policy v1 drives, the expert labels every visited state (30000+).
# 3. Fine-tune v1 (runs/push_flow_v1/checkpoint.pt, made by scripts/train_default.sh) on the
#    1000 original demos + 1 + 2, lower learning rate, 1 torch thread.
# Then export: python -m genpolicy_ros.policy.checkpoint runs/push_flow_v2/checkpoint.pt \
#                  checkpoints/push_flow_v2.pt
# and recalibrate the monitor for it: genpolicy-calibrate --episodes 40 --feature-demos \
#     data/demos/push_v1 data/demos/push_filter_v1 data/demos/push_dagger_v1
# Usage: nohup scripts/train_finetune.sh > runs/push_flow_v2.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs
[ -f data/demos/push_filter_v1/meta.json ] || python -m genpolicy_ros.policy.collect \
    --driver expert --episodes 300 --seed 20000 --out data/demos/push_filter_v1 --workers 2
[ -f data/demos/push_dagger_v1/meta.json ] || python -m genpolicy_ros.policy.collect \
    --driver policy --checkpoint push_flow_v1.pt --episodes 200 --seed 30000 \
    --out data/demos/push_dagger_v1 --workers 2
python -m genpolicy_ros.policy.train \
    --demos data/demos/push_v1 data/demos/push_filter_v1 data/demos/push_dagger_v1 \
    --out runs/push_flow_v2 --init-from runs/push_flow_v1/checkpoint.pt \
    --iters 4000 --learning-rate 0.0001 --batch-size 64 --seed 1 --threads 1 --resume
