"""Training steps with the diagnostics plugin on vs off (DIAGNOSTICS.ENABLED).

Demo config of each gated trainer (tiny backbone, 32x32 images, batch as in the demo YAML); the
same batches are replayed through forward_backward (data loading excluded), and the ratio
is on/off time per step. `--text-width 512` is not offered: the plugin's cost does not depend on
the encoder, so a larger step only shrinks the ratio; the tiny step is the honest worst case.
Run: python benchmarks/diagnostics_overhead.py [--trainers CoOpGated MaPLeGated] [--steps 30]
"""
import argparse
import tempfile

from common import banner, demo_trainer, quiet, timed

import torch


def step_time(root, out, name, enabled, steps):
    with quiet():
        trainer = demo_trainer(root, out, name, ("DIAGNOSTICS.ENABLED", enabled, "DIAGNOSTICS.PLOTS", False,
                                                 "DATALOADER.FEATURE_CACHE.ENABLED", False))
        trainer.before_train()
        trainer.epoch = 0
        trainer.before_epoch()
        trainer.set_model_mode("train")
    batches = list(trainer.train_loader_x)
    trainer.num_batches = len(batches)

    def run():
        with quiet():
            for i in range(steps):
                trainer.batch_idx = i % len(batches)
                trainer.forward_backward(batches[trainer.batch_idx])
    return timed(run, repeat=3) / steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trainers", nargs="+", default=["CoOpGated", "MaPLeGated"])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="gs_bench_data_")
    banner("diagnostics on vs off, time per training step",
           f"demo configs (gatescope-tiny), {args.steps} steps x 3, LOG_EVERY 1")
    worst = 0.0
    for name in args.trainers:
        torch.manual_seed(0)
        off = step_time(root, tempfile.mkdtemp(), name, False, args.steps)
        on = step_time(root, tempfile.mkdtemp(), name, True, args.steps)
        print(f"{name}: off {off * 1e3:.2f} ms/step, on {on * 1e3:.2f} ms/step, on/off {on / off:.3f}")
        worst = max(worst, on / off)
    print(f"ratio: {worst:.2f}")


if __name__ == "__main__":
    main()
