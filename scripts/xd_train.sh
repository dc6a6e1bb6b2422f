#!/usr/bin/env bash
# Cross-dataset transfer and domain generalisation, training (CoCoOp): train on all classes of the
# source dataset (imagenet in the published tables) with SHOTS images per class.
#   bash scripts/xd_train.sh imagenet SEED TRAINER CFG [SHOTS] [KEY VALUE ...]
# Then scripts/xd_test.sh (the 10 other datasets) and scripts/dg_test.sh (imagenetv2,
# imagenet_sketch, imagenet_a, imagenet_r) evaluate this model.
source "$(dirname "$0")/common.sh"

DIR=$(run_dir xd train "${DATASET}")
skip_if_done "${DIR}"
train --dataset-config-file "$(dataset_cfg "${DATASET}")" --output-dir "${DIR}" \
    ${EXTRA_OPTS[@]+"${EXTRA_OPTS[@]}"} ${GATE_OPTS[@]+"${GATE_OPTS[@]}"} \
    DATASET.NUM_SHOTS "${SHOTS}"
