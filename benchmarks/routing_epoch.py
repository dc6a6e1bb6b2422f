"""What the routing mechanism costs: one training epoch of hard-EM on the patch statistics vs CoOp.

The regime where a gate routes by domain (docs/study.md, "When gating works") is CoOpGated with a
pool of 2 prompts, a softmax router on the mean patch embedding (GATE.COND patch_mean) and hard-EM
training. The patch statistics need the images, so that trainer cannot use the frozen
image-feature cache (trainers/feature_cache.py): every epoch reads the (decoded, cached) images
and runs the image tower, and the text tower encodes both prompts. Compared in the same process,
on the multi-domain task (160 training images, batch 32), diagnostics off (the training's own
cost): CoOp (one prompt, cached features), CoOpGated's plain pool on the image feature (cached
features, two prompts) and the hard-EM router on patch_mean.
Run: python benchmarks/routing_epoch.py [--epochs 7]
"""
import argparse
import tempfile

from common import banner, median_epoch_seconds, ready_for_epochs

import torch

TASK = ("DATASET.NAME", "GatescopeMultiDomain", "DIAGNOSTICS.ENABLED", False, "OPTIM.MAX_EPOCH", 100)
POOL = ("GATE.NAME", "softmax", "GATE.TARGET", "pool", "GATE.POOL_SIZE", 2)
SETUPS = {
    "CoOp (cached image features)": ("CoOp", ()),
    "CoOpGated pool, image_feature (cached features)": ("CoOpGated", POOL),
    "CoOpGated hard-EM, patch_mean (no feature cache)": ("CoOpGated", POOL + (
        "GATE.COND", "patch_mean", "GATE.HARD_EM.ENABLED", True, "GATE.TEST_MODE", "hard", "GATE.LR_MULT", 1.0)),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=7, help="epochs timed per setup (median)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="gs_bench_data_")
    torch.manual_seed(0)
    trainers = {name: ready_for_epochs(root, trainer, opts + TASK) for name, (trainer, opts) in SETUPS.items()}
    first = next(iter(trainers.values()))
    banner("one training epoch of the routing mechanism vs CoOp",
           f"multi-domain task, {len(first.dm.dataset.train_x)} training images, batch "
           f"{first.cfg.DATALOADER.TRAIN_X.BATCH_SIZE}, gatescope-tiny, diagnostics off")
    for name, t in trainers.items():
        print(f"{name}: feature cache {'on' if getattr(t, 'feature_cache_path', None) else 'off'}, "
              f"set-up {t.setup_seconds:.2f} s")
    medians = median_epoch_seconds(trainers, args.epochs)
    for name, seconds in medians.items():
        print(f"{name}: {seconds * 1e3:.1f} ms per epoch")
    coop, hard_em = medians[next(iter(SETUPS))], medians[list(SETUPS)[-1]]
    print(f"ratio: {hard_em / coop:.2f}")


if __name__ == "__main__":
    main()
