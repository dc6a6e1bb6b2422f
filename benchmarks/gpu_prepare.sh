#!/usr/bin/env bash
# Run HERE (a machine with the project's venv and the package index) before benchmarks/gpu_run.sh
# goes to a GPU machine: that machine reaches no network and has torch, torchvision, timm,
# tabulate, pluggy and tensorboard but not open_clip, ftfy, wcwidth or yacs (see
# /work/.library/device/KINDS.md). Puts their wheels in .whl/ and the demo backbone's weights in
# .gscache/ (both ignored by git; about 16 MB, under the 64 MiB a device call may carry), so the
# GPU run neither installs from the network nor spends a minute pretraining the demo weights.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl .gscache
# Python 3.12 is the GPU machine's; these four are pure-Python wheels.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl \
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 yacs==0.1.8
weights=$(HF_HUB_OFFLINE=1 python3 -c "from trainers.backbone.demo_weights import ensure_demo_weights; print(ensure_demo_weights(verbose=False))")
cp "$weights" .gscache/
ls -l .whl .gscache
echo "next: the device tool's run with command 'bash benchmarks/gpu_run.sh', carry ['.whl', '.gscache'], timeout_s 600"
