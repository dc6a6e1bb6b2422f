#!/usr/bin/env bash
# Base-to-new generalisation, step 2 (CoCoOp): evaluate the model trained by base2new_train.sh
# (same arguments) on the new classes, loading its last checkpoint (or epoch $LOADEP).
#   bash scripts/base2new_test.sh DATASET SEED TRAINER CFG [SHOTS] [KEY VALUE ...]
source "$(dirname "$0")/common.sh"

MODEL_DIR=$(run_dir base2new train_base "${DATASET}")
DIR=$(run_dir base2new test_new "${DATASET}")
skip_if_done "${DIR}"
EPOCH=$(load_epoch "${MODEL_DIR}")
train --dataset-config-file "$(dataset_cfg "${DATASET}")" --output-dir "${DIR}" \
    --model-dir "${MODEL_DIR}" --load-epoch "${EPOCH}" --eval-only \
    ${EXTRA_OPTS[@]+"${EXTRA_OPTS[@]}"} ${GATE_OPTS[@]+"${GATE_OPTS[@]}"} \
    DATASET.NUM_SHOTS "${SHOTS}" DATASET.SUBSAMPLE_CLASSES new
