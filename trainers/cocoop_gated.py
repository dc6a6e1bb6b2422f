"""CoCoOpGated: CoCoOp plus a gate on its instance-conditioned part or on its context tokens.

Targets (GATE.TARGET):
- `meta` (mask, K = 1): how much of the meta-net shift each image receives, ctx + g pi(x);
- `meta_token` (mask, K = N_CTX): the same per context token, ctx_i + g_i pi(x);
- `length` (mask, K = N_CTX): per-input weights on the shifted tokens, g_i (ctx_i + pi(x));
- `token_dim` (mask, K = N_CTX x width): the same per token and dimension (the study's vector gate).
The study's keys TRAINER.COCOOP.USE_GATE etc. select this trainer (see study_keys.py).
Conditioning (GATE.COND): `image_feature`, the normalised frozen image feature the meta-net reads.
A constant gate of 1 gives CoCoOp's logits exactly.
"""
import torch
import torch.nn as nn

from .cocoop import CoCoOp, CoCoOpCLIP, CoCoOpPromptLearner
from .engine import TRAINER_REGISTRY
from .gating import GatedTrainer
from .study_keys import add_study_gate_keys, resolve_study_keys


class CoCoOpGatedPromptLearner(CoCoOpPromptLearner):
    def __init__(self, backbone, classnames, n_ctx, ctx_init, target, build_gate, param_matched=False):
        super().__init__(backbone, classnames, n_ctx, ctx_init)
        self.target = target
        n, width = self.template.n_ctx, backbone.ctx_dim
        self.gate = build_gate({"meta": 1, "meta_token": n, "length": n, "token_dim": n * width}[target],
                               backbone.embed_dim)
        self.ctx_bias = nn.Parameter(torch.zeros(n, 1 if target == "length" else width, dtype=self.ctx.dtype)) \
            if param_matched else None

    def shifted_context(self, image_features):
        g = self.gate(image_features)
        # (B, K, 1) weights per token (or one for the meta target), (B, n, W) per token and dimension
        g = g.view(g.shape[0], self.template.n_ctx, -1) if self.target == "token_dim" else g.unsqueeze(-1)
        bias = self.meta_net(image_features).unsqueeze(1)  # (B, 1, W)
        ctx = self.ctx if self.ctx_bias is None else self.ctx + self.ctx_bias
        if self.target in ("length", "token_dim"):
            return g * (ctx.unsqueeze(0) + bias)
        return ctx.unsqueeze(0) + g * bias


@TRAINER_REGISTRY.register()
class CoCoOpGated(GatedTrainer, CoCoOp):
    PARENT_TRAINER = "CoCoOp"
    TARGETS = {"meta": "mask", "meta_token": "mask", "length": "mask", "token_dim": "mask"}
    CONDS = ("image_feature",)
    DEFAULT_TARGET = "meta"

    @staticmethod
    def add_config(cfg):
        add_study_gate_keys(cfg.TRAINER.COCOOP, with_mode=True)

    @staticmethod
    def resolve_config(cfg):
        resolve_study_keys(cfg, "CoCoOp", "CoCoOpGated", "COCOOP")

    def build_custom_clip(self, cfg, classnames, backbone):
        c = cfg.TRAINER.COCOOP
        _ = self.gate_cond  # validates GATE.COND
        if cfg.GATE.PARAM_MATCHED_BIAS and self.gate_target not in ("length", "token_dim"):
            raise ValueError("GATE.PARAM_MATCHED_BIAS needs GATE.TARGET length or token_dim")
        learner = CoCoOpGatedPromptLearner(backbone, classnames, c.N_CTX, c.CTX_INIT, self.gate_target,
                                           self.build_gate, cfg.GATE.PARAM_MATCHED_BIAS)
        return CoCoOpCLIP(learner, backbone, c.ENCODE_MEMORY_MB)
