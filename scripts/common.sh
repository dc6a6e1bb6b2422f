# Sourced by the protocol scripts: arguments, paths, the gate option, skipping finished runs.
#
#   bash scripts/<protocol>.sh DATASET SEED TRAINER CFG [SHOTS] [KEY VALUE ...]
#
# DATASET and CFG are config names (configs/datasets/DATASET.yaml,
# configs/trainers/TRAINER/CFG.yaml); SHOTS defaults to 16; KEY VALUE pairs go to train.py.
# Environment: DATA (dataset root, default ./data), OUTPUT (default ./output), GATE (adds
# GATE.NAME $GATE; the cfg folder becomes CFG@GATE), PYTHON (default python), LOADEP (epoch to
# evaluate; default: the training's last checkpoint). The layout is trainers/tools/layout.py's.
set -euo pipefail

if [ $# -lt 4 ]; then
    echo "usage: bash $0 DATASET SEED TRAINER CFG [SHOTS] [KEY VALUE ...]" >&2
    exit 2
fi
DATASET=$1
SEED=$2
TRAINER=$3
CFG=$4
if [[ "${5:-}" =~ ^[0-9]+$ ]]; then
    SHOTS=$5
    shift 5
else
    SHOTS=16
    shift 4
fi
EXTRA_OPTS=("$@")

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="${REPO}${PYTHONPATH:+:${PYTHONPATH}}"
DATA=${DATA:-./data}
OUTPUT=${OUTPUT:-./output}
PYTHON=${PYTHON:-python}
GATE=${GATE:-}
CFG_DIR=${CFG}${GATE:+@${GATE}}
GATE_OPTS=()
if [ -n "${GATE}" ]; then
    GATE_OPTS=(GATE.NAME "${GATE}")
fi
CFG_FILE=${REPO}/configs/trainers/${TRAINER}/${CFG}.yaml

# run_dir PROTOCOL PHASE DATASET: the folder of one run ("" phase for few-shot).
run_dir() {
    echo "${OUTPUT}/${1}${2:+/${2}}/${3}/shots_${SHOTS}/${TRAINER}/${CFG_DIR}/seed${SEED}"
}

dataset_cfg() {
    echo "${REPO}/configs/datasets/${1}.yaml"
}

# skip_if_done DIR: exit 0 when DIR already holds a finished run.
skip_if_done() {
    if "${PYTHON}" -m trainers.tools.runs --complete "$1"; then
        echo "The results exist at $1 (so skip this job)"
        exit 0
    fi
}

# load_epoch MODEL_DIR: $LOADEP, else the epoch of MODEL_DIR's last checkpoint.
load_epoch() {
    if [ -n "${LOADEP:-}" ]; then
        echo "${LOADEP}"
    else
        "${PYTHON}" -m trainers.tools.runs --last-epoch "$1"
    fi
}

# train ARGS...: train.py with the common flags first; the caller adds its own and the opts.
train() {
    "${PYTHON}" "${REPO}/train.py" --root "${DATA}" --seed "${SEED}" --trainer "${TRAINER}" \
        --config-file "${CFG_FILE}" "$@"
}
