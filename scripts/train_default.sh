#!/usr/bin/env bash
# Train policy v1 (checkpoints/push_flow_v1.pt) on data/demos/push_v1: behaviour cloning, the base
# that scripts/train_finetune.sh fine-tunes into the shipped default v2.
# Labels from the modal expert: set expert.kind: modal in config/sim.yaml to repeat this.
#
# Exactly the command used for the shipped checkpoint (CPU, 1 torch thread; run nothing else
# heavy beside it on a 2-core machine). Re-running continues from runs/push_flow_v1 (--resume);
# stop it any time with kill -TERM <pid>: it writes a checkpoint before exiting. Then:
#   python -m genpolicy_ros.policy.checkpoint runs/push_flow_v1/checkpoint.pt \
#       checkpoints/push_flow_v1.pt
# One thread, not two: on this shared 2-core machine two threads gave 3.1 it/s alone but fell to
# 0.3-1.4 it/s whenever another process took a core; one thread kept ~3 it/s.
# Usage: nohup scripts/train_default.sh > runs/push_flow_v1.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs
python -m genpolicy_ros.policy.train --demos data/demos/push_v1 --out runs/push_flow_v1 \
    --iters 14000 --batch-size 64 --seed 0 --threads 1 --resume
