"""The demo backbone at first use: a pretraining step before and after issue 17, and the unpacking.

Before: every step took a dense gradient and AdamW state for the whole token-embedding table
(49408 x 64), of which the captions use about 40 rows. After: only those rows are trained (which
also lets the trained weights ship in 0.9 MB). Both run the same recipe (batch 128, corpus of
generated shapes) for `--steps` steps in this process; the full pretraining is 1200 steps. First
use no longer pretrains at all: it unpacks the shipped weights, timed last.
Run: python benchmarks/demo_pretraining.py [--steps 60] [--repeat 2]
"""
import argparse
import os
import tempfile
import time

from common import banner

import numpy as np
import torch
import torch.nn.functional as F

from trainers.backbone import demo_weights
from trainers.backbone.adapter import encode_text_embeddings


def reference_pretraining(steps, corpus_size):
    """The pretraining loop as it was before issue 17 (same recipe otherwise)."""
    r = {**demo_weights.RECIPE, "steps": steps, "corpus_size": corpus_size}
    generator = torch.Generator().manual_seed(r["seed"])
    images, tokens, labels = demo_weights.demo_corpus(r["corpus_size"], r["image_size"], r["seed"])
    model = demo_weights.initial_model(r["seed"]).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=r["peak_lr"], weight_decay=r["weight_decay"])
    for step in range(r["steps"]):
        lr = r["peak_lr"] * min(1.0, (step + 1) / r["warmup_steps"]) * 0.5 * (1 + np.cos(np.pi * step / r["steps"]))
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(images), (r["batch_size"],), generator=generator)
        t = tokens[idx]
        t = t[:, :int(t.argmax(-1).max()) + 1]
        img = F.normalize(model.encode_image(images[idx]), dim=-1)
        txt = F.normalize(encode_text_embeddings(model, model.token_embedding(t), t.argmax(-1)), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.t()
        same = (labels[idx, None] == labels[None, idx]).float()
        target = same / same.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--corpus-size", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    full_steps = demo_weights.RECIPE["steps"]
    banner("demo pretraining step: before vs after issue 17; first use with the shipped weights",
           f"gatescope-tiny, batch {demo_weights.RECIPE['batch_size']}, {args.steps} steps each "
           f"(corpus of {args.corpus_size} images, rendered in both runs)")
    reference_pretraining(2, 64)  # warm-up: first calls allocate
    # Alternated and the fastest of each kept: on a shared machine a burst of load hits one run.
    refs, news = [], []
    for _ in range(args.repeat):
        refs.append(seconds(lambda: reference_pretraining(args.steps, args.corpus_size)))
        news.append(seconds(lambda: demo_weights.pretrain_demo_clip(verbose=False, steps=args.steps,
                                                                    corpus_size=args.corpus_size)))
    ref, new = min(refs), min(news)
    print(f"before: {ref / args.steps * 1e3:.1f} ms per step, {full_steps} steps projected {ref / args.steps * full_steps:.0f} s")
    print(f"after:  {new / args.steps * 1e3:.1f} ms per step, {full_steps} steps projected {new / args.steps * full_steps:.0f} s")
    shipped = demo_weights.shipped_weights_path()
    if os.path.isfile(shipped):
        with tempfile.TemporaryDirectory() as cache:
            os.environ[demo_weights.CACHE_ENV] = cache
            unpack = seconds(lambda: demo_weights.ensure_demo_weights(verbose=False))
        print(f"first use with the shipped weights (unpack and write the cache): {unpack:.2f} s")
    print(f"ratio: {ref / new:.2f}")


if __name__ == "__main__":
    main()
