"""Text encoding with EOT truncation vs all 77 positions (forward + backward to the context).

ViT-B/16-shaped text encoder (width 512, 12 layers, 8 heads; random weights: speed does not
depend on the values), 100 classes, N_CTX 16, CoOp's shared context.
Run: python benchmarks/text_eot_truncation.py [--classes 100] [--n-ctx 16] [--backbone ViT-B/16] [--device cuda]
"""
import argparse

from common import banner, bench_device, timed

import torch

from trainers.backbone import ClipBackbone, load_clip
from trainers.prompting import ClassPromptTemplate, init_context


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="ViT-B/16")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--n-ctx", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when there is a GPU)")
    args = parser.parse_args()
    device = bench_device(args.device)
    torch.manual_seed(0)
    backbone = ClipBackbone(load_clip(args.backbone, ""))
    # Class names of 1-4 words, as in CoOp's datasets.
    words = ["red", "spotted", "great", "sea", "mountain", "house", "tree", "frog", "jet", "lily"]
    classnames = [" ".join(words[(i * 7 + k) % len(words)] for k in range(1 + i % 4)) for i in range(args.classes)]
    ctx, prefix, n_ctx = init_context(backbone, args.n_ctx)
    short = ClassPromptTemplate(backbone, classnames, n_ctx, prefix).to(device)
    full = ClassPromptTemplate(backbone, classnames, n_ctx, prefix, truncate=False).to(device)
    # Built on the CPU (as the trainers do: tokenizing happens there), then moved.
    backbone.to(device)
    ctx = ctx.to(device).requires_grad_()
    banner("text encoding: EOT truncation vs all 77 positions (forward + backward)",
           f"{args.backbone}-shaped text encoder, {args.classes} classes, N_CTX {n_ctx}, "
           f"{short.seq_len} vs {full.seq_len} positions")

    def step(template, truncate):
        def run():
            out = backbone.encode_text(template(ctx), template.eot_idx, truncate=truncate)
            torch.autograd.grad(out.square().sum(), ctx)
        return run

    with torch.no_grad():
        a = backbone.encode_text(short(ctx), short.eot_idx)
        b = backbone.encode_text(full(ctx), full.eot_idx, truncate=False)
    print(f"max |difference| of the features: {(a - b).abs().max().item():.2e}")
    fast = timed(step(short, True), repeat=args.repeat)
    ref = timed(step(full, False), repeat=args.repeat)
    print(f"truncated ({short.seq_len} positions): {fast:.3f} s")
    print(f"all {full.seq_len} positions: {ref:.3f} s")
    print(f"ratio: {ref / fast:.2f}")


if __name__ == "__main__":
    main()
