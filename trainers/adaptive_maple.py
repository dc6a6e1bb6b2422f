"""The study's AdaptiveMaPLe and AdaptiveBiDirMaPLe, as configurations of gates on MaPLe.

Per-task gates (no input): **length gates** over the N_CTX_MAX context tokens, scaling every
text prompt token by g_i (the visual prompts are coupled from the scaled tokens), and **depth
gates** over the deep-prompt layers 1..PROMPT_DEPTH_MAX-1, scaling the inserted prompts by
g_j. The default gate is `sigmoid` at logit GATE.SIGMOID.INIT_LOGIT (1.0, the study's); soft in
training and, with GATE.TEST_MODE hard, kept only where g > GATE.THRESHOLD at test.
TYPE full / length_only (depth fixed at FIXED_PROMPT_DEPTH) / depth_only (length fixed at
FIXED_N_CTX). Regularisers: sparsity LAMBDA_SPARSITY * sum g over every gate present
(including under length_only, where the study's code silently added zero) and depth
smoothness LAMBDA_DEPTH_SMOOTH * sum_j |g_{j+1} - g_j| over the depth gates.
Keys `TRAINER.ADAPTIVE_MAPLE.*` and `TRAINER.ADAPTIVE_BIDIR_MAPLE.*` as in the study.
"""
import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

from gates.config_spec import above, at_least, between, declare, one_of, unchecked

from .bidir_maple import BiDirMaPLe, BiDirMaPLePromptLearner
from .deep_prompting import DeepPromptCLIP
from .engine import TRAINER_REGISTRY
from .gating import GatedTrainer
from .maple import MaPLe, MaPLePromptLearner
from .prompt_trainer import PRECISIONS

TYPES = ("full", "length_only", "depth_only")


def add_adaptive_keys(node):
    node.N_CTX_MAX = 8  # context tokens under the length gates
    node.CTX_INIT = "a photo of a"
    node.PREC = "fp16"
    node.PROMPT_DEPTH_MAX = 12  # deep-prompt layers under the depth gates (+1)
    node.LAMBDA_SPARSITY = 0.01  # weight of sum g (all gates)
    node.LAMBDA_DEPTH_SMOOTH = 0.001  # weight of sum |g_{j+1} - g_j| (depth gates)
    node.TYPE = "full"  # full, length_only, depth_only
    node.FIXED_N_CTX = 4  # context length when the length is not gated (depth_only)
    node.FIXED_PROMPT_DEPTH = 6  # prompt depth when the depth is not gated (length_only)
    declare(node, N_CTX_MAX=at_least(1), CTX_INIT=unchecked("words of the initial context"), PREC=one_of(*PRECISIONS),
            PROMPT_DEPTH_MAX=at_least(1), LAMBDA_SPARSITY=at_least(0), LAMBDA_DEPTH_SMOOTH=at_least(0),
            TYPE=one_of(*TYPES), FIXED_N_CTX=at_least(1), FIXED_PROMPT_DEPTH=at_least(1))


class AdaptiveGates:
    """Mixin for a MaPLe-family prompt learner: per-task length and depth gates.

    Needs `self.length_gate` / `self.depth_gate` (GateHeads or None) set by the constructor.
    """

    def task_gate(self, head):
        if head is None:
            return None
        # Per-task gates read no input: one row of a dummy condition.
        return head(torch.zeros(1, 1, dtype=self.ctx.dtype, device=self.ctx.device))

    def forward(self):
        text = self.text_prompts()
        g_len = self.task_gate(self.length_gate)
        if g_len is not None:
            text = [t * g_len[0].unsqueeze(-1).to(t.dtype) for t in text]
        text, vision = self.couple(text)
        prompts = self.prompts_from(text, vision)
        g_depth = self.task_gate(self.depth_gate)
        if g_depth is not None:
            prompts.text_gates = prompts.vision_gates = g_depth
            prompts.gate_mode = "scale"
        self.last_gates = {"length": g_len, "depth": g_depth}
        return prompts

    def prompts_from(self, text, vision):
        from .deep_prompting import Prompts

        return Prompts(text=self.template(text[0]), text_deep=text[1:], vision=vision[0], vision_deep=vision[1:])

    def regularisers(self, lambda_sparsity, lambda_smooth):
        """Named regulariser terms on the last forward's gate values (None when weight 0)."""
        gates = [g for g in self.last_gates.values() if g is not None]
        terms = {}
        if lambda_sparsity > 0 and gates:
            terms["sparsity"] = lambda_sparsity * sum(g.sum() for g in gates)
        depth = self.last_gates["depth"]
        if lambda_smooth > 0 and depth is not None and depth.shape[1] > 1:
            terms["depth_smooth"] = lambda_smooth * (depth[:, 1:] - depth[:, :-1]).abs().sum()
        return terms


def adaptive_shape(c):
    if c.TYPE not in TYPES:
        raise ValueError(f"TYPE must be one of {TYPES}, got {c.TYPE!r}")
    n_ctx = c.FIXED_N_CTX if c.TYPE == "depth_only" else c.N_CTX_MAX
    depth = c.FIXED_PROMPT_DEPTH if c.TYPE == "length_only" else c.PROMPT_DEPTH_MAX
    return n_ctx, depth, c.TYPE != "depth_only", c.TYPE != "length_only"


class AdaptiveMaPLePromptLearner(AdaptiveGates, MaPLePromptLearner):
    def __init__(self, backbone, classnames, c, build_gate):
        n_ctx, depth, gate_length, gate_depth = adaptive_shape(c)
        super().__init__(backbone, classnames, n_ctx, c.CTX_INIT, depth)
        self.length_gate = build_gate(n_ctx, 1, "length") if gate_length else None
        self.depth_gate = build_gate(depth - 1, 1, "depth") if gate_depth and depth > 1 else None


class AdaptiveBiDirMaPLePromptLearner(AdaptiveGates, BiDirMaPLePromptLearner):
    def __init__(self, backbone, classnames, c, build_gate):
        n_ctx, depth, gate_length, gate_depth = adaptive_shape(c)
        super().__init__(backbone, classnames, n_ctx, c.CTX_INIT, depth, c.BIDIRECTIONAL, c.MAPPING_HIDDEN_DIM_RATIO)
        self.length_gate = build_gate(n_ctx, 1, "length") if gate_length else None
        self.depth_gate = build_gate(depth - 1, 1, "depth") if gate_depth and depth > 1 else None


class AdaptiveTrainer(GatedTrainer):
    """Shared by both adaptive trainers: per-task gates, regularisers as named loss terms."""

    TARGETS = {"length": "mask", "depth": "mask"}
    CONDS = ("none",)
    DEFAULT_GATE = "sigmoid"
    DEFAULT_TARGET = "length"
    DEFAULT_COND = "none"

    def compute_losses(self, output, label):
        losses = super().compute_losses(output, label)
        c = self.method_cfg
        losses.update(self.model.prompt_learner.regularisers(c.LAMBDA_SPARSITY, c.LAMBDA_DEPTH_SMOOTH))
        return losses


@TRAINER_REGISTRY.register()
class AdaptiveMaPLe(AdaptiveTrainer, MaPLe):
    CFG_NODE = "ADAPTIVE_MAPLE"

    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.ADAPTIVE_MAPLE = CN()
        add_adaptive_keys(cfg.TRAINER.ADAPTIVE_MAPLE)

    def build_custom_clip(self, cfg, classnames, backbone):
        _ = self.gate_cond
        return DeepPromptCLIP(AdaptiveMaPLePromptLearner(backbone, classnames, self.method_cfg, self.build_gate),
                              backbone)


@TRAINER_REGISTRY.register()
class AdaptiveBiDirMaPLe(AdaptiveTrainer, BiDirMaPLe):
    CFG_NODE = "ADAPTIVE_BIDIR_MAPLE"

    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.ADAPTIVE_BIDIR_MAPLE = CN()
        node = cfg.TRAINER.ADAPTIVE_BIDIR_MAPLE
        add_adaptive_keys(node)
        node.BIDIRECTIONAL = True
        node.CYCLE_LOSS_WEIGHT = 0.1
        node.CYCLE_WARMUP_EPOCHS = 0
        node.MAPPING_HIDDEN_DIM_RATIO = 0.5
        node.USE_EMA = False
        node.EMA_DECAY = 0.999
        node.EMA_START_EPOCH = 5
        declare(node, CYCLE_LOSS_WEIGHT=at_least(0), CYCLE_WARMUP_EPOCHS=at_least(0),
                MAPPING_HIDDEN_DIM_RATIO=above(0), EMA_DECAY=between(0, 1), EMA_START_EPOCH=at_least(0))

    def build_custom_clip(self, cfg, classnames, backbone):
        _ = self.gate_cond
        learner = AdaptiveBiDirMaPLePromptLearner(backbone, classnames, self.method_cfg, self.build_gate)
        return DeepPromptCLIP(learner, backbone)


class ParamMatchedPromptLearner(MaPLePromptLearner):
    """AdaptiveMaPLe's prompts with each gate replaced by a zero-initialised additive bias of the
    same size: one per context token (added to every text prompt token) and one per deep layer
    (added to that layer's prompts). Same parameter count, no gating: a gain of the adaptive
    model over this one cannot come from its extra parameters."""

    def __init__(self, backbone, classnames, c):
        n_ctx, depth, gate_length, gate_depth = adaptive_shape(c)
        super().__init__(backbone, classnames, n_ctx, c.CTX_INIT, depth)
        dtype = backbone.dtype
        self.length_bias = nn.Parameter(torch.zeros(n_ctx, dtype=dtype)) if gate_length else None
        self.depth_bias = nn.Parameter(torch.zeros(depth - 1, dtype=dtype)) if gate_depth and depth > 1 else None

    def text_prompts(self):
        text = super().text_prompts()
        if self.length_bias is not None:
            text = [t + self.length_bias.unsqueeze(-1) for t in text]
        if self.depth_bias is not None:
            text = [text[0]] + [t + b for t, b in zip(text[1:], self.depth_bias)]
        return text


@TRAINER_REGISTRY.register()
class ParamMatched(MaPLe):
    """The study's parameter-matched control for AdaptiveMaPLe (keys TRAINER.PARAM_MATCHED, the
    adaptive model's shape keys)."""

    CFG_NODE = "PARAM_MATCHED"

    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.PARAM_MATCHED = CN()
        add_adaptive_keys(cfg.TRAINER.PARAM_MATCHED)

    def build_custom_clip(self, cfg, classnames, backbone):
        return DeepPromptCLIP(ParamMatchedPromptLearner(backbone, classnames, self.method_cfg), backbone)
