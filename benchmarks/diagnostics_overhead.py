"""Training steps with the diagnostics plugin on vs off (DIAGNOSTICS.ENABLED).

Demo config of each gated trainer; the same batches are replayed through forward_backward
(data loading excluded), and the ratio is on/off time per step. `--size vit_b16` (the default)
runs the study's setting: a ViT-B/16-shaped backbone (random weights), 224 px, batch 4, MaPLe's
prompt depth 9; `--size tiny` the demo's tiny backbone, where a step takes milliseconds and the
plugin's fixed per-step cost (about a millisecond of Python and small reductions) is the worst case.
Run: python benchmarks/diagnostics_overhead.py [--size vit_b16|tiny] [--trainers ...] [--steps N]
"""
import argparse
import tempfile

from common import VIT_B16_OPTS, banner, demo_trainer, quiet, timed

import torch


SIZES = {
    "tiny": {"opts": (), "steps": 30, "repeat": 3},
    "vit_b16": {"opts": VIT_B16_OPTS + ("DATALOADER.TRAIN_X.BATCH_SIZE", 4), "steps": 2, "repeat": 1,
                "trainer_opts": {"MaPLeGated": ("TRAINER.MAPLE.PROMPT_DEPTH", 9)}},
}


def step_time(root, out, name, enabled, steps, size="tiny", repeat=3):
    spec = SIZES[size]
    opts = spec["opts"] + spec.get("trainer_opts", {}).get(name, ())
    with quiet():
        trainer = demo_trainer(root, out, name, ("DIAGNOSTICS.ENABLED", enabled, "DIAGNOSTICS.PLOTS", False,
                                                 "DATALOADER.FEATURE_CACHE.ENABLED", False) + opts)
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
    return timed(run, repeat=repeat) / steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trainers", nargs="+", default=["CoOpGated", "MaPLeGated"])
    parser.add_argument("--size", choices=sorted(SIZES), default="vit_b16")
    parser.add_argument("--steps", type=int, help="steps per timing (default: 30 tiny, 2 vit_b16)")
    args = parser.parse_args()
    spec = SIZES[args.size]
    steps = args.steps or spec["steps"]
    root = tempfile.mkdtemp(prefix="gs_bench_data_")
    banner("diagnostics on vs off, time per training step",
           f"demo configs, size {args.size} {spec['opts']}, {steps} steps x {spec['repeat']}, LOG_EVERY 1")
    worst = 0.0
    for name in args.trainers:
        torch.manual_seed(0)
        off = step_time(root, tempfile.mkdtemp(), name, False, steps, args.size, spec["repeat"])
        on = step_time(root, tempfile.mkdtemp(), name, True, steps, args.size, spec["repeat"])
        print(f"{name}: off {off * 1e3:.2f} ms/step, on {on * 1e3:.2f} ms/step, on/off {on / off:.3f}")
        worst = max(worst, on / off)
    print(f"ratio: {worst:.2f}")


if __name__ == "__main__":
    main()
