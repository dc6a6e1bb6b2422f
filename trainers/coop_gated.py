"""CoOpGated: CoOp plus a gate on its context.

Targets (GATE.TARGET):
- `length` (mask, K = N_CTX): per-input weights on the context tokens, ctx_i * g_i; prompts are
  then per image and encoded with CoCoOp's batched path;
- `token_dim` (mask, K = N_CTX x width): per token and dimension (the study's "vector" gate);
- `prefix` (simplex, K = N_CTX): a distribution over prefix lengths 1..N_CTX; the text features
  of each length are computed once per step (K encodes of C prompts) and mixed per image;
- `pool` (simplex, K = GATE.POOL_SIZE): a distribution over P learnable prompts, mixed the same way.
Conditioning (GATE.COND): `image_feature`, the frozen CLIP image feature that CoOp computes anyway.
A constant gate of 1 (or a one-hot simplex on the full prompt) gives CoOp's logits exactly.
The study's keys TRAINER.COOP.USE_GATE etc. select this trainer (see study_keys.py).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone.adapter import cosine_logits
from .coop import CoOp, CoOpCLIP, CoOpPromptLearner
from .engine import TRAINER_REGISTRY
from .feature_cache import image_features_of
from .gating import GatedTrainer
from .prompting import ClassPromptTemplate, init_context, prompts_per_chunk
from .study_keys import add_study_gate_keys, resolve_study_keys


class CoOpGatedPromptLearner(CoOpPromptLearner):
    def __init__(self, backbone, classnames, c, target, build_gate, pool_size, memory_mb, param_matched=False):
        super().__init__(backbone, classnames, c.N_CTX, c.CTX_INIT, c.CSC, c.CLASS_TOKEN_POSITION)
        n, width = self.template.n_ctx, backbone.ctx_dim
        self.target = target
        if c.CSC and target != "length":
            raise ValueError(f"TRAINER.COOP.CSC works with GATE.TARGET length only, not {target!r}")
        if target == "pool":
            # P prompts, each initialised as CoOp initialises its one (the first one exactly so).
            extra = [init_context(backbone, n, c.CTX_INIT)[0] for _ in range(pool_size - 1)]
            self.ctx = nn.Parameter(torch.stack([self.ctx.detach(), *extra]))
        if target == "prefix":
            self.prefix_templates = nn.ModuleList(
                ClassPromptTemplate(backbone, classnames, k, " ".join(["X"] * k)) for k in range(1, n))
        num_options = {"length": n, "token_dim": n * width, "prefix": n, "pool": pool_size}[target]
        self.gate = build_gate(num_options, backbone.embed_dim)
        # The study's parameter-matched baseline: an additive bias with the gate's shape.
        self.ctx_bias = nn.Parameter(torch.zeros(n, 1 if target == "length" else width, dtype=self.ctx.dtype)) \
            if param_matched else None
        self.max_prompts = prompts_per_chunk(backbone, self.template.seq_len, memory_mb)

    def option_text_features(self, backbone):
        """(K, C, D) normalised text features of each option of a simplex target."""
        if self.target == "pool":
            prompts = [self.template(ctx, self.position) for ctx in self.ctx]
            templates = [self.template] * len(prompts)
        else:
            templates = [*self.prefix_templates, self.template]
            prompts = [t(self.ctx[:t.n_ctx], self.position) for t in templates]
        return torch.stack([F.normalize(backbone.encode_text(p, t.eot_idx), dim=-1)
                            for p, t in zip(prompts, templates)])

    def text_features(self, backbone, g):
        """(C, D) when the gate does not depend on the input, else (B, C, D)."""
        per_input = self.gate.input_dependent
        if self.target in ("prefix", "pool"):
            options = self.option_text_features(backbone)
            if not per_input:
                return torch.einsum("k,kcd->cd", g[0], options)
            return torch.einsum("bk,kcd->bcd", g, options)
        n = self.template.n_ctx
        ctx = self.ctx if self.ctx_bias is None else self.ctx + self.ctx_bias
        weights = g.view(g.shape[0], n, 1) if self.target == "length" else g.view(g.shape[0], n, -1)
        if ctx.dim() == 3:  # class-specific context: (B, C, n, W)
            weights = weights.unsqueeze(1)
        if not per_input:
            return backbone.encode_text(self.template(ctx * weights[0], self.position), self.template.eot_idx)
        ctx = ctx * weights if ctx.dim() == 3 else (ctx.unsqueeze(0) * weights).unsqueeze(1)
        prompts = self.template(ctx, self.position)  # (B, C, L, W)
        B, C = prompts.shape[:2]
        features = backbone.encode_text(prompts.flatten(0, 1), self.template.eot_idx.repeat(B),
                                        max_prompts=self.max_prompts)
        return features.view(B, C, -1)


class CoOpGatedCLIP(CoOpCLIP):
    def forward(self, image):
        image_features = image_features_of(self.backbone, image)  # (B, D) cached features pass through
        g = self.prompt_learner.gate(F.normalize(image_features, dim=-1))
        text = self.prompt_learner.text_features(self.backbone, g)
        return cosine_logits(image_features, text, self.backbone.logit_scale)


@TRAINER_REGISTRY.register()
class CoOpGated(GatedTrainer, CoOp):
    PARENT_TRAINER = "CoOp"
    TARGETS = {"length": "mask", "token_dim": "mask", "prefix": "simplex", "pool": "simplex"}
    CONDS = ("image_feature",)
    DEFAULT_TARGET = "length"

    @staticmethod
    def add_config(cfg):
        add_study_gate_keys(cfg.TRAINER.COOP)

    @staticmethod
    def resolve_config(cfg):
        resolve_study_keys(cfg, "CoOp", "CoOpGated", "COOP")

    def build_custom_clip(self, cfg, classnames, backbone):
        if cfg.GATE.PARAM_MATCHED_BIAS and self.gate_target not in ("length", "token_dim"):
            raise ValueError("GATE.PARAM_MATCHED_BIAS needs GATE.TARGET length or token_dim")
        learner = CoOpGatedPromptLearner(backbone, classnames, cfg.TRAINER.COOP, self.gate_target, self.build_gate,
                                         cfg.GATE.POOL_SIZE, cfg.GATE.ENCODE_MEMORY_MB, cfg.GATE.PARAM_MATCHED_BIAS)
        _ = self.gate_cond  # validates GATE.COND
        return CoOpGatedCLIP(learner, backbone)
