"""One training epoch with the frozen image-feature cache vs recomputing the image features.

CoOp demo config (gatescope-tiny, 16 shots x 10 classes, batch 32; deterministic transform, so
the cache is exact). Both trainers start from the same seed; the cache is built before timing
(its one-off cost is printed). The reference is the original code's way: images read, decoded,
transformed and encoded every epoch (no feature cache, no decoded-image cache). (tests/test_fast_paths.py checks that cached and uncached training give the same context.)
Run: python benchmarks/feature_cache_epoch.py [--trainer CoOp] [--shots 16] [--size demo|vit_b16] [--epochs 5]
"""
import argparse
import tempfile

from common import VIT_B16_OPTS, banner, median_epoch_seconds, ready_for_epochs

import torch


SIZES = {
    "demo": (),
    # What the cache saves grows with the image tower.
    "vit_b16": VIT_B16_OPTS,
}


def prepared(root, name, shots, cache_dir, enabled, size="demo"):
    return ready_for_epochs(root, name, SIZES[size] + (
        "DATASET.NUM_SHOTS", shots, "DATALOADER.FEATURE_CACHE.ENABLED", enabled,
        "DATALOADER.FEATURE_CACHE.DIR", cache_dir, "DIAGNOSTICS.ENABLED", False, "OPTIM.MAX_EPOCH", 100,
        # The reference is the original code's way: every epoch reads, decodes and encodes.
        "DATALOADER.IMAGE_CACHE_MB", 1024 if enabled else 0))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trainer", default="CoOp")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--size", choices=sorted(SIZES), default="demo")
    parser.add_argument("--epochs", type=int, default=5, help="epochs timed per path (median)")
    args = parser.parse_args()
    root, cache_dir = tempfile.mkdtemp(prefix="gs_bench_data_"), tempfile.mkdtemp(prefix="gs_bench_fc_")
    torch.manual_seed(0)
    cached = prepared(root, args.trainer, args.shots, cache_dir, True, args.size)
    plain = prepared(root, args.trainer, args.shots, cache_dir, False, args.size)
    banner(f"one {args.trainer} epoch: cached image features vs recomputed",
           f"{args.trainer} demo config, size {args.size}, {len(cached.dm.dataset.train_x)} training images, "
           f"batch {cached.cfg.DATALOADER.TRAIN_X.BATCH_SIZE}")
    print(f"cache built in {cached.setup_seconds:.2f} s (once per training set, backbone and transform)")

    medians = median_epoch_seconds({"cached": cached, "plain": plain}, args.epochs)
    fast, ref = medians["cached"], medians["plain"]
    print(f"epoch with cached features: {fast * 1e3:.1f} ms; reading and encoding every epoch: {ref * 1e3:.1f} ms")
    print(f"ratio: {ref / fast:.2f}")


if __name__ == "__main__":
    main()
