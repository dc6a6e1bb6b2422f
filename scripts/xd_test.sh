#!/usr/bin/env bash
# Cross-dataset transfer, evaluation (CoCoOp): evaluate the model xd_train.sh trained on $SOURCE
# (default imagenet; same SEED TRAINER CFG SHOTS) on a target dataset.
#   bash scripts/xd_test.sh TARGET SEED TRAINER CFG [SHOTS] [KEY VALUE ...]
source "$(dirname "$0")/common.sh"

SOURCE=${SOURCE:-imagenet}
MODEL_DIR=$(run_dir xd train "${SOURCE}")
DIR=$(run_dir xd test "${DATASET}")
skip_if_done "${DIR}"
EPOCH=$(load_epoch "${MODEL_DIR}")
train --dataset-config-file "$(dataset_cfg "${DATASET}")" --output-dir "${DIR}" \
    --model-dir "${MODEL_DIR}" --load-epoch "${EPOCH}" --eval-only \
    ${EXTRA_OPTS[@]+"${EXTRA_OPTS[@]}"} ${GATE_OPTS[@]+"${GATE_OPTS[@]}"}
