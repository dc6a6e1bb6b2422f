#!/usr/bin/env bash
# Base-to-new generalisation, step 1 (CoCoOp): train on the base classes (first half of the labels).
#   bash scripts/base2new_train.sh DATASET SEED TRAINER CFG [SHOTS] [KEY VALUE ...]
# Then scripts/base2new_test.sh with the same arguments evaluates this model on the new classes.
source "$(dirname "$0")/common.sh"

DIR=$(run_dir base2new train_base "${DATASET}")
skip_if_done "${DIR}"
train --dataset-config-file "$(dataset_cfg "${DATASET}")" --output-dir "${DIR}" \
    ${EXTRA_OPTS[@]+"${EXTRA_OPTS[@]}"} ${GATE_OPTS[@]+"${GATE_OPTS[@]}"} \
    DATASET.NUM_SHOTS "${SHOTS}" DATASET.SUBSAMPLE_CLASSES base
