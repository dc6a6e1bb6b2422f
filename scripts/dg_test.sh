#!/usr/bin/env bash
# Domain generalisation, evaluation (CoCoOp): evaluate the model xd_train.sh trained on $SOURCE
# (default imagenet; same SEED TRAINER CFG SHOTS) on a shifted version of it.
#   bash scripts/dg_test.sh imagenetv2|imagenet_sketch|imagenet_a|imagenet_r SEED TRAINER CFG [SHOTS] [KEY VALUE ...]
source "$(dirname "$0")/common.sh"

SOURCE=${SOURCE:-imagenet}
MODEL_DIR=$(run_dir xd train "${SOURCE}")
DIR=$(run_dir dg test "${DATASET}")
skip_if_done "${DIR}"
EPOCH=$(load_epoch "${MODEL_DIR}")
train --dataset-config-file "$(dataset_cfg "${DATASET}")" --output-dir "${DIR}" \
    --model-dir "${MODEL_DIR}" --load-epoch "${EPOCH}" --eval-only \
    ${EXTRA_OPTS[@]+"${EXTRA_OPTS[@]}"} ${GATE_OPTS[@]+"${GATE_OPTS[@]}"}
