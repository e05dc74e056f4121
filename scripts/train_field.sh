#!/usr/bin/env bash
# Field-expert policies f1-f5 (f3 shipped): the memoryless push field (config/sim.yaml
# expert.kind: field) demonstrates and labels instead of the modal expert. f1 = v3's weights
# trained further on 1000 field-expert episodes driven through the CBF filter (DART noise);
# f2-f4 = DAgger rounds with the previous policy driving and the field expert labelling; f5 = f4
# with the DAgger chunks at the expert's pace. Exactly the commands used.
# Usage: nohup scripts/train_field.sh > runs/field.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs
PY=${PYTHON:-.venv/bin/python}
# shellcheck source=dagger_lib.sh
source scripts/dagger_lib.sh
[ -f data/demos/push_field_v1/meta.json ] || $PY -m genpolicy_ros.policy.collect \
    --driver expert --episodes 1000 --seed 20000 --out data/demos/push_field_v1 --workers 2
$PY -m genpolicy_ros.policy.train --demos data/demos/push_field_v1 --out runs/field_f1 \
    --init-from checkpoints/push_flow_v3.pt \
    --iters 6000 --learning-rate 0.0003 --batch-size 64 --seed 21 --threads 2 --resume
export_ckpt field_f1
SETS=(data/demos/push_field_v1)
dagger_round field_f1 92000 push_dagger_field1 field_f2 22
dagger_round field_f2 93000 push_dagger_field2 field_f3 23
dagger_round field_f3 94000 push_dagger_field3 field_f4 24
# f5: f4 trained further on the same four sets, the DAgger chunks relabelled at the expert's
# pace (config/train_policy.yaml policy_labels; f4 had learned the driving policies' pace).
$PY -m genpolicy_ros.policy.train --demos "${SETS[@]}" --out runs/field_f5 \
    --init-from runs/field_f4/checkpoint.pt --policy-labels expert_pace \
    --iters 4000 --learning-rate 0.0001 --batch-size 64 --seed 25 --threads 2 --resume
export_ckpt field_f5
