"""One epoch of CoCoOpGated on the demo: every fast path on (the default) vs none.

Fast (the defaults): frozen image features cached, prompts encoded for the whole batch in one
chunked call, text encoder run only up to the last EOT position. None: image features
recomputed every step, CoCoOp's per-image loop, all 77 positions (the original code's way).
Both trainers start from the same seed and weights; diagnostics off in both (measured apart in
diagnostics_overhead.py). Memory: the activations autograd keeps for one step's backward, and on a
GPU the peak GPU memory one step allocates. `--size vit_b16`: the study's backbone shape (random
weights, 224 px) on the same data.
Run: python benchmarks/cocoopgated_epoch.py [--epochs 3] [--size demo|vit_b16]
"""
import argparse
import tempfile

from common import (VIT_B16_OPTS, banner, demo_trainer, frozen_storages, gpu_peak_bytes, mib, quiet,
                    saved_activation_bytes, timed)

import torch

from trainers.prompting import ClassPromptTemplate

SIZES = {"demo": (), "vit_b16": VIT_B16_OPTS}


def build(root, cache_dir, fast, size="demo"):
    with quiet():
        trainer = demo_trainer(root, tempfile.mkdtemp(), "CoCoOpGated", SIZES[size] + (
            "DATALOADER.FEATURE_CACHE.ENABLED", fast, "DATALOADER.FEATURE_CACHE.DIR", cache_dir,
            "DIAGNOSTICS.ENABLED", False, "OPTIM.MAX_EPOCH", 100))
        trainer.before_train()
        trainer.epoch = 0
    if not fast:
        model, backbone = trainer.model, trainer.model.backbone
        c = trainer.cfg.TRAINER.COCOOP
        learner = model.prompt_learner
        learner.template = ClassPromptTemplate(backbone, trainer.dm.dataset.classnames, c.N_CTX, c.CTX_INIT,
                                               truncate=False).to(trainer.device)
        encode = backbone.encode_text
        backbone.encode_text = lambda *a, **kw: encode(*a, **{**kw, "truncate": False})
        model.forward = model.forward_per_image
    return trainer


def step_memory(trainer):
    """{"peak": bytes of activations saved for the backward pass of one training step,
    "gpu_peak": peak GPU bytes the step allocated (None on the CPU)}."""
    batch = next(iter(trainer.train_loader_x))
    image, label = trainer.parse_batch_train(batch)
    record = {}
    with gpu_peak_bytes(record, trainer.device):
        with saved_activation_bytes(record) as r:
            r["frozen"].update(frozen_storages(trainer.model.backbone))
            loss = torch.nn.functional.cross_entropy(trainer.model(image), label)
        loss.backward()
    trainer.optim.zero_grad()
    return record


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per path (median)")
    parser.add_argument("--size", choices=sorted(SIZES), default="demo")
    args = parser.parse_args()
    root, cache_dir = tempfile.mkdtemp(prefix="gs_bench_data_"), tempfile.mkdtemp(prefix="gs_bench_fc_")
    fast, none = build(root, cache_dir, True, args.size), build(root, cache_dir, False, args.size)
    banner("one CoCoOpGated epoch: all fast paths vs none",
           f"CoCoOpGated demo config, size {args.size}, {len(fast.dm.dataset.train_x)} training images, "
           f"batch {fast.cfg.DATALOADER.TRAIN_X.BATCH_SIZE}, gate {fast.cfg.GATE.NAME} on {fast.gate_target}")
    with torch.no_grad():
        images = next(iter(none.train_loader_x))["img"][:4].to(none.device)
        none.model.eval()
        fast.model.eval()
        same = all(torch.equal(a, b) for a, b in zip(fast.model.prompt_learner.parameters(),
                                                     none.model.prompt_learner.parameters()))
        diff = (fast.model(images) - none.model(images)).abs().max().item()
    print(f"same initial weights: {same}; max |fast - reference| logits on 4 images: {diff:.2e}")

    def epoch(trainer):
        def run():
            with quiet():
                trainer.run_epoch()
        return run
    times = {"fast": [], "none": []}
    for _ in range(args.epochs):  # alternate: the machine's load changes over time
        times["fast"].append(timed(epoch(fast), repeat=1, warmup=0))
        times["none"].append(timed(epoch(none), repeat=1, warmup=0))
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    mem = {"fast": step_memory(fast), "none": step_memory(none)}
    for k in ("fast", "none"):
        gpu = f", peak GPU memory per step {mib(mem[k]['gpu_peak'])}" if mem[k]["gpu_peak"] is not None else ""
        print(f"{k:5s}: epoch {med[k]:.3f} s (median of {args.epochs}), "
              f"saved activations per step {mem[k]['peak'] / 2 ** 20:.1f} MiB{gpu}")
    print(f"ratio: {med['none'] / med['fast']:.2f}")


if __name__ == "__main__":
    main()
