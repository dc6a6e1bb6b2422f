#!/usr/bin/env bash
# Few-shot learning (CoOp): train on all classes with SHOTS images per class, test on the test set.
#   bash scripts/fewshot.sh DATASET SEED TRAINER CFG [SHOTS] [KEY VALUE ...]
#   for SHOTS in 1 2 4 8 16; do for SEED in 1 2 3; do
#     bash scripts/fewshot.sh oxford_pets $SEED CoOp vit_b16_ep50 $SHOTS
#   done; done
source "$(dirname "$0")/common.sh"

DIR=$(run_dir fewshot "" "${DATASET}")
skip_if_done "${DIR}"
train --dataset-config-file "$(dataset_cfg "${DATASET}")" --output-dir "${DIR}" \
    ${EXTRA_OPTS[@]+"${EXTRA_OPTS[@]}"} ${GATE_OPTS[@]+"${GATE_OPTS[@]}"} \
    DATASET.NUM_SHOTS "${SHOTS}"
