# Shared by the training scripts (source it; needs PY and a SETS array of demo directories).
# export_ckpt RUN: strip runs/RUN/checkpoint.pt to the loadable runs/RUN/export.pt.
export_ckpt() { $PY -m genpolicy_ros.policy.checkpoint "runs/$1/checkpoint.pt" "runs/$1/export.pt"; }
# dagger_round FROM SEED SET TO TRAIN_SEED: policy FROM drives behind the CBF filter for 300
# episodes from SEED while the scripted expert (config/sim.yaml expert.kind) labels every state
# (data/demos/SET), then TO is trained from FROM on every set so far plus SET (4000 iterations,
# lr 1e-4, training seed TRAIN_SEED). Skips a collection that already finished.
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
