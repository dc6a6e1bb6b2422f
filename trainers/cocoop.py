"""CoCoOp (Zhou et al., CVPR 2022): context conditioned on each image through a meta-net.

v_i(x) = v_i + pi(x), pi = Linear(D, D/16)-ReLU-Linear(D/16, W) on the normalised image
feature; each image gets its own class prompts and text features. Keys
`TRAINER.COCOOP.{N_CTX, CTX_INIT, PREC}` as in CoCoOp, plus `ENCODE_MEMORY_MB`.

The original encodes one image's prompts at a time in a Python loop (hence batch size 1 in
its configs). Here the B x C prompts of a batch are encoded in one call, cut after the longest
EOT, and split into chunks (recomputed in the backward pass) when their activations would
exceed `ENCODE_MEMORY_MB`; `forward_per_image` keeps the original loop as the reference.
"""
from collections import OrderedDict

import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

from gates.config_spec import at_least, declare, one_of, unchecked

from .backbone.adapter import cosine_logits
from .engine import TRAINER_REGISTRY
from .feature_cache import FeatureCacheMixin, image_features_of
from .prompt_trainer import PRECISIONS, PromptTrainer
from .prompting import ClassPromptTemplate, init_context, prompts_per_chunk


class CoCoOpPromptLearner(nn.Module):
    """CoCoOp's `PromptLearner`: the context `ctx` and the `meta_net` (linear1-relu-linear2, the
    names of CoCoOp's checkpoints) whose output shifts the context per image."""

    def __init__(self, backbone, classnames, n_ctx, ctx_init=""):
        super().__init__()
        ctx_vectors, prompt_prefix, n_ctx = init_context(backbone, n_ctx, ctx_init)
        print(f'Initial context: "{prompt_prefix}"')
        print(f"Number of context words (tokens): {n_ctx}")
        self.ctx = nn.Parameter(ctx_vectors)
        vis_dim = backbone.embed_dim
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, max(vis_dim // 16, 1), dtype=backbone.dtype)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(max(vis_dim // 16, 1), backbone.ctx_dim, dtype=backbone.dtype)),
        ]))
        self.template = ClassPromptTemplate(backbone, classnames, n_ctx, prompt_prefix,
                                            context_key="TRAINER.COCOOP.N_CTX")

    def shifted_context(self, image_features):
        """(B, n_ctx, W): the context plus the meta-net's shift of each normalised image feature."""
        bias = self.meta_net(image_features)
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)

    def forward(self, image_features):
        """(B, C, L, W) prompts, one set per image."""
        return self.template(self.shifted_context(image_features).unsqueeze(1))


class CoCoOpCLIP(nn.Module):
    """CoCoOp's `CustomCLIP`: per-image prompts encoded in memory-capped chunks of the batch
    (CoCoOp's loop over images is `forward_per_image`); its `TextEncoder` is ClipBackbone's."""

    def __init__(self, prompt_learner, backbone, memory_mb=4096):
        super().__init__()
        self.prompt_learner = prompt_learner
        self.backbone = backbone
        self.max_prompts = prompts_per_chunk(backbone, prompt_learner.template.seq_len, memory_mb)

    def image_features(self, image):
        features = image_features_of(self.backbone, image)  # (B, D) cached features pass through
        return features / features.norm(dim=-1, keepdim=True)

    def instance_text_features(self, image_features):
        prompts = self.prompt_learner(image_features)
        B, C = prompts.shape[:2]
        eot = self.prompt_learner.template.eot_idx.repeat(B)
        features = self.backbone.encode_text(prompts.flatten(0, 1), eot, max_prompts=self.max_prompts)
        return features.view(B, C, -1)

    def forward(self, image):
        image_features = self.image_features(image)
        text_features = self.instance_text_features(image_features)
        return cosine_logits(image_features, text_features, self.backbone.logit_scale)

    def forward_per_image(self, image):
        """The original CoCoOp loop: one image's prompts at a time (reference path)."""
        image_features = self.image_features(image)
        eot = self.prompt_learner.template.eot_idx
        logits = []
        for feature in image_features:
            prompts = self.prompt_learner(feature.unsqueeze(0))[0]
            text = self.backbone.encode_text(prompts, eot)
            logits.append(cosine_logits(feature.unsqueeze(0), text, self.backbone.logit_scale))
        return torch.cat(logits)


@TRAINER_REGISTRY.register()
class CoCoOp(FeatureCacheMixin, PromptTrainer):
    """CoCoOp's trainer `CoCoOp(TrainerX)`."""

    CFG_NODE = "COCOOP"

    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.COCOOP = CN()
        cfg.TRAINER.COCOOP.N_CTX = 16  # number of context vectors
        cfg.TRAINER.COCOOP.CTX_INIT = ""  # initialization words
        cfg.TRAINER.COCOOP.PREC = "fp16"  # fp16, fp32, amp
        # Cap on the activation memory of one batched text-encoding chunk (in MiB).
        cfg.TRAINER.COCOOP.ENCODE_MEMORY_MB = 4096
        declare(cfg.TRAINER.COCOOP, N_CTX=at_least(1), CTX_INIT=unchecked("words; their number replaces N_CTX"),
                PREC=one_of(*PRECISIONS), ENCODE_MEMORY_MB=at_least(1))

    def build_custom_clip(self, cfg, classnames, backbone):
        c = cfg.TRAINER.COCOOP
        return CoCoOpCLIP(CoCoOpPromptLearner(backbone, classnames, c.N_CTX, c.CTX_INIT), backbone,
                          c.ENCODE_MEMORY_MB)
