"""CoCoOp's instance-conditioned text encoding: one batched (chunked, checkpointed) call vs the
original per-image loop, both with and without EOT truncation; forward + backward of a step.

Reports time and the peak memory of activations saved for the backward pass of each.
Default: ViT-B/16-shaped text tower (random weights), frozen image features as input, batch 4, 10 classes, N_CTX 4 with
CTX_INIT "a photo of a" (CoCoOp's setting); chunks from TRAINER.COCOOP.ENCODE_MEMORY_MB.
Run: python benchmarks/cocoop_batched.py [--classes 10] [--batch 4] [--memory-mb 4096] [--device cuda]
On a GPU it also reports the peak GPU memory each path allocated.
"""
import argparse

from common import banner, bench_device, frozen_storages, gpu_peak_bytes, mib, saved_activation_bytes, timed

import torch
import torch.nn.functional as F

from trainers.backbone import ClipBackbone, load_clip
from trainers.cocoop import CoCoOpCLIP, CoCoOpPromptLearner
from trainers.prompting import ClassPromptTemplate, prompts_per_chunk


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="ViT-B/16")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--memory-mb", type=float, default=4096)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when there is a GPU)")
    args = parser.parse_args()
    device = bench_device(args.device)
    torch.manual_seed(0)
    backbone = ClipBackbone(load_clip(args.backbone, ""))
    classnames = [f"class {i}" for i in range(args.classes)]
    learner = CoCoOpPromptLearner(backbone, classnames, 4, "a photo of a")
    model = CoCoOpCLIP(learner, backbone, args.memory_mb)
    short = learner.template
    full = ClassPromptTemplate(backbone, classnames, short.n_ctx, "a photo of a", truncate=False).to(device)
    model.to(device)  # built on the CPU (tokenizing happens there), as the trainers do
    # Frozen image features as input (the models take (B, D) features): both paths encode the
    # images once, so only the text encoding is compared.
    images = torch.randn(args.batch, backbone.embed_dim, device=device)
    labels = torch.arange(args.batch, device=device) % args.classes
    params = [p for p in learner.parameters() if p.requires_grad]
    banner("CoCoOp batched instance-conditioned encoding vs the per-image loop (forward + backward)",
           f"{args.backbone}-shaped, batch {args.batch}, {args.classes} classes, N_CTX {short.n_ctx}, "
           f"ENCODE_MEMORY_MB {args.memory_mb}")

    results = {}
    for truncate in (True, False):
        learner.template = short if truncate else full
        model.max_prompts = prompts_per_chunk(backbone, learner.template.seq_len, args.memory_mb)
        encode = backbone.encode_text

        def no_truncation(*a, **kw):
            return encode(*a, **kw, truncate=False)
        if not truncate:
            backbone.encode_text = no_truncation
        for name, forward in (("batched", model.forward), ("loop", model.forward_per_image)):
            def step(forward=forward):
                loss = F.cross_entropy(forward(images), labels)
                torch.autograd.grad(loss, params)
            record = {}
            with gpu_peak_bytes(record, device), saved_activation_bytes(record) as r:
                r["frozen"].update(frozen_storages(backbone))
                step()  # also the warm-up
            seconds = timed(step, repeat=args.repeat, warmup=0)
            results[(name, truncate)] = seconds
            chunk = f", chunks of {model.max_prompts} prompts" if name == "batched" else ""
            print(f"{name:8s} {'EOT-truncated' if truncate else 'all 77 positions':17s} "
                  f"({learner.template.seq_len} positions{chunk}): {seconds:.3f} s, "
                  f"saved activations {mib(record['peak'])}"
                  + (f", peak GPU memory {mib(record['gpu_peak'])}" if record["gpu_peak"] is not None else ""))
        backbone.encode_text = encode
    learner.template = short
    with torch.no_grad():
        diff = (model(images) - model.forward_per_image(images)).abs().max().item()
    print(f"max |batched - loop| logits: {diff:.2e}")
    print(f"batched vs loop without truncation: {results[('loop', False)] / results[('batched', False)]:.2f}x")
    print(f"all fast (batched + truncated) vs the original (loop, 77 positions): "
          f"{results[('loop', False)] / results[('batched', True)]:.2f}x")
    print(f"ratio: {results[('loop', True)] / results[('batched', True)]:.2f}")


if __name__ == "__main__":
    main()
