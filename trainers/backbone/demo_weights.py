"""Weights for the tiny demo CLIP: pretrained here, contrastively, on generated shape images.

A prompt learner on a CLIP with random weights has nothing to adapt (its zero-shot accuracy is
chance and CoOp's loss cannot fall), so the demo and the tests that need meaningful features
use `MODEL.BACKBONE.PRETRAINED gatescope-demo` with `gatescope-tiny`. The weights come from a
short CLIP pretraining run (both towers, symmetric contrastive loss) on a corpus of demo-style
images rendered with their own seed, so none of them is an image of the demo dataset, and
captions such as "a photo of a star." or "a star on a noise background.". The run is
deterministic and takes under a minute on 2 CPU cores; its result is cached as an open_clip
state dict under `$GATESCOPE_CACHE` (default `~/.cache/gatescope`).
"""
import io
import os
import os.path as osp
import time

import numpy as np
import torch
import torch.nn.functional as F

from gates.plumbing import atomic_write_bytes, fork_rng

DEMO_WEIGHTS_TAG = "gatescope-demo"
DEMO_ARCH = "gatescope-tiny"
CACHE_ENV = "GATESCOPE_CACHE"
# Bump when anything below changes what the pretraining produces.
RECIPE_VERSION = 2
RECIPE = dict(corpus_size=4000, image_size=32, steps=1200, batch_size=128, peak_lr=2e-3,
              warmup_steps=50, weight_decay=0.1, seed=20261129)
FILLER_WORDS = ("this", "is", "here", "we", "see", "look", "at", "picture", "image", "of", "the",
                "small", "simple", "drawing", "clear", "one", "nice", "shape")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def cache_dir():
    return os.environ.get(CACHE_ENV) or osp.join(osp.expanduser("~"), ".cache", "gatescope")


def demo_weights_path():
    return osp.join(cache_dir(), f"{DEMO_ARCH}-{DEMO_WEIGHTS_TAG}-v{RECIPE_VERSION}.pt")


def ensure_demo_weights(verbose=True):
    """Path of the cached demo weights, pretraining them first if they are not there yet."""
    path = demo_weights_path()
    if osp.isfile(path):
        return path
    if verbose:
        print(f"Pretraining the tiny demo CLIP once (about a minute); caching it at {path}")
    state_dict = pretrain_demo_clip(verbose=verbose)
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    atomic_write_bytes(path, buffer.getvalue())  # a concurrent or killed run never leaves half a file
    return path


def demo_corpus(corpus_size, image_size, seed):
    """Normalised images, captions and shape labels of the pretraining corpus."""
    import open_clip

    from ..data.demo_images import DEMO_CLASSES, DEMO_DOMAINS, render_demo_image

    rng = np.random.default_rng(seed)
    images, captions, labels = [], [], []
    for _ in range(corpus_size):
        c, d = int(rng.integers(len(DEMO_CLASSES))), int(rng.integers(len(DEMO_DOMAINS)))
        shape, domain = DEMO_CLASSES[c], DEMO_DOMAINS[d]
        images.append(render_demo_image(shape, domain, rng, size=image_size))
        caption = f"a photo of a {shape}." if rng.random() < 0.5 else f"a {shape} on a {domain} background."
        # Up to 24 leading filler words, so that every position a prompt with many context
        # tokens reaches has a trained positional embedding (captions alone end by ~12).
        filler = rng.choice(FILLER_WORDS, size=int(rng.integers(0, 25)))
        captions.append(" ".join([*filler, caption]))
        labels.append(c)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return x, open_clip.tokenize(captions), torch.tensor(labels)


def pretrain_demo_clip(verbose=True, **overrides):
    """Contrastive pretraining of `gatescope-tiny`; returns its state dict (open_clip format).

    Images of the same shape are all positives for each other's captions (targets spread
    evenly over them), since a batch of 128 holds about 13 images of each of the 10 shapes.
    """
    from .adapter import encode_text_embeddings
    from .loader import open_clip  # open_clip with the gatescope-tiny config registered

    r = {**RECIPE, **overrides}
    generator = torch.Generator().manual_seed(r["seed"])
    images, tokens, labels = demo_corpus(r["corpus_size"], r["image_size"], r["seed"])
    with fork_rng(r["seed"]):
        model = open_clip.create_model(DEMO_ARCH)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=r["peak_lr"], weight_decay=r["weight_decay"])
    start = time.time()
    for step in range(r["steps"]):
        lr = r["peak_lr"] * min(1.0, (step + 1) / r["warmup_steps"]) * 0.5 * (1 + np.cos(np.pi * step / r["steps"]))
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(images), (r["batch_size"],), generator=generator)
        t = tokens[idx]
        seq_len = int(t.argmax(-1).max()) + 1  # causal text tower: cutting after the EOT is exact
        t = t[:, :seq_len]
        img = F.normalize(model.encode_image(images[idx]), dim=-1)
        txt = F.normalize(encode_text_embeddings(model, model.token_embedding(t), t.argmax(-1)), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.t()
        same = (labels[idx, None] == labels[None, idx]).float()
        target = same / same.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if verbose and (step + 1) % 200 == 0:
            print(f"  demo CLIP pretraining step {step + 1}/{r['steps']} loss {loss.item():.3f} "
                  f"({time.time() - start:.0f} s)")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
