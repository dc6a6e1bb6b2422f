"""Parameter-count controls: is a gated model's gain its gating, or its extra parameters?

`ParamMatched` is the study's control (its trainers/param_matched_trainer.py, keys
TRAINER.PARAM_MATCHED): BiDirMaPLe's prompts at the fixed shape FIXED_N_CTX x FIXED_PROMPT_DEPTH,
without gates, plus a parameter buffer sized so that the learnable count reaches the adaptive
model's (shape N_CTX_MAX x PROMPT_DEPTH_MAX, bidirectional) by the study's count:

    budget  = study_param_count(N_CTX_MAX, PROMPT_DEPTH_MAX, bidirectional=True) + N_CTX_MAX + (PROMPT_DEPTH_MAX - 1)
    current = study_param_count(FIXED_N_CTX, FIXED_PROMPT_DEPTH, BIDIRECTIONAL)
    extra deep-prompt layers: E = (budget - current) // per_layer,  per_layer = one layer's count
    buffer: ctx <- ctx + MLP(ctx), MLP = Linear(W_t, h) - ReLU - Linear(h, W_t),
            h = max(64, int(rest / (2 W_t))) when rest = budget - current - E * per_layer > 0

(counts without biases, as the study's). As in the study's code, its mapping MLPs are trained by
the cycle loss but do not couple the towers, and its shallow visual prompt is the class mean
(SHALLOW_VISION_PROMPT). Differences, documented in docs/coming_from_the_study.md: the budget
reads the adaptive shape from N_CTX_MAX / PROMPT_DEPTH_MAX (the study's code hard-codes 4 and
8, the values of its config), and the E extra layers are real deep-prompt layers (depth
FIXED_PROMPT_DEPTH + E); the study's code created them and never used them.

`BiasMatched` is gatescope's tighter control (keys TRAINER.BIAS_MATCHED): AdaptiveMaPLe's prompts
with each gate replaced by a zero-initialised additive bias of the same size, so the parameter
count is exactly the adaptive model's and at initialisation it is MaPLe at the same shape.
"""
import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

from .adaptive_maple import add_adaptive_keys, add_bidir_keys, adaptive_shape
from .bidir_maple import BiDirMaPLe, BiDirMaPLePromptLearner
from .deep_prompting import DeepPromptCLIP, n_layers
from .engine import TRAINER_REGISTRY
from .maple import MaPLe, MaPLePromptLearner

BUFFER_MIN_HIDDEN = 64  # the study's floor on the buffer MLP's width


def study_param_count(n_ctx, depth, text_dim, vis_dim, bidirectional):
    """Learnable values of a BiDirMaPLe-shaped prompt learner by the study's count (weights only).

    ctx n*Wt, proj Wt*Wv, per deep layer (depth - 1 of them): prompt n*Wt, projection Wt*Wv and,
    bidirectional, L2V Wt*(Wt//2) + (Wt//2)*Wv, V2L Wv*(Wv//2) + (Wv//2)*Wt and alpha, beta.
    """
    per_layer = deep_layer_count(n_ctx, text_dim, vis_dim, bidirectional)
    return n_ctx * text_dim + text_dim * vis_dim + (depth - 1) * per_layer


def deep_layer_count(n_ctx, text_dim, vis_dim, bidirectional):
    count = n_ctx * text_dim + text_dim * vis_dim
    if bidirectional:
        count += text_dim * (text_dim // 2) + (text_dim // 2) * vis_dim
        count += vis_dim * (vis_dim // 2) + (vis_dim // 2) * text_dim + 2
    return count


def param_buffer_shape(c, text_dim, vis_dim):
    """(extra deep layers E, buffer MLP hidden width h or 0) for node `c` (formulas above)."""
    budget = study_param_count(c.N_CTX_MAX, c.PROMPT_DEPTH_MAX, text_dim, vis_dim, True)
    budget += c.N_CTX_MAX + (c.PROMPT_DEPTH_MAX - 1)  # the adaptive model's gates
    current = study_param_count(c.FIXED_N_CTX, c.FIXED_PROMPT_DEPTH, text_dim, vis_dim, c.BIDIRECTIONAL)
    rest = budget - current
    per_layer = deep_layer_count(c.FIXED_N_CTX, text_dim, vis_dim, c.BIDIRECTIONAL)
    extra = max(rest // per_layer, 0)
    rest -= extra * per_layer
    hidden = max(BUFFER_MIN_HIDDEN, int(rest / (2 * text_dim))) if rest > 0 else 0
    return extra, hidden


class ParamMatchedPromptLearner(BiDirMaPLePromptLearner):
    def __init__(self, backbone, classnames, c):
        extra, hidden = param_buffer_shape(c, backbone.ctx_dim, backbone.vis_dim)
        depth = c.FIXED_PROMPT_DEPTH + extra
        text_layers, vision_layers = n_layers(backbone)
        if depth > min(text_layers, vision_layers):
            raise ValueError(f"TRAINER.PARAM_MATCHED: matching the adaptive model's parameter count takes {extra} "
                             f"deep-prompt layers beyond FIXED_PROMPT_DEPTH {c.FIXED_PROMPT_DEPTH}, more than the "
                             f"tower's {min(text_layers, vision_layers)} layers; raise FIXED_N_CTX or "
                             "FIXED_PROMPT_DEPTH")
        super().__init__(backbone, classnames, c.FIXED_N_CTX, c.CTX_INIT, depth, c.BIDIRECTIONAL,
                         c.MAPPING_HIDDEN_DIM_RATIO, shallow_vision=c.SHALLOW_VISION_PROMPT, cycle_on="raw",
                         couple_deep=False)
        self.extra_layers = extra
        width, dtype = backbone.ctx_dim, backbone.dtype
        self.param_buffer_mlp = nn.Sequential(
            nn.Linear(width, hidden, dtype=dtype), nn.ReLU(), nn.Linear(hidden, width, dtype=dtype)) if hidden else None
        print(f"ParamMatched: {extra} extra deep-prompt layer(s), buffer MLP width {hidden or '-'}; "
              f"{sum(p.numel() for p in self.parameters()):,} learnable values")

    def text_prompts(self):
        text = super().text_prompts()
        if self.param_buffer_mlp is not None:
            text = [text[0] + self.param_buffer_mlp(text[0]), *text[1:]]
        return text


@TRAINER_REGISTRY.register()
class ParamMatched(BiDirMaPLe):
    """The study's parameter-matched control (see the module docstring)."""

    PARENT_TRAINER = "BiDirMaPLe"
    CFG_NODE = "PARAM_MATCHED"

    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.PARAM_MATCHED = CN()
        node = cfg.TRAINER.PARAM_MATCHED
        add_adaptive_keys(node)
        add_bidir_keys(node)

    def build_custom_clip(self, cfg, classnames, backbone):
        return DeepPromptCLIP(ParamMatchedPromptLearner(backbone, classnames, self.method_cfg), backbone)


class BiasMatchedPromptLearner(MaPLePromptLearner):
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
class BiasMatched(MaPLe):
    """gatescope's bias-matched control for AdaptiveMaPLe (keys TRAINER.BIAS_MATCHED, the adaptive
    model's shape keys); before this name it was called ParamMatched, now the study's control."""

    PARENT_TRAINER = "MaPLe"
    CFG_NODE = "BIAS_MATCHED"

    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.BIAS_MATCHED = CN()
        add_adaptive_keys(cfg.TRAINER.BIAS_MATCHED)

    def build_custom_clip(self, cfg, classnames, backbone):
        return DeepPromptCLIP(BiasMatchedPromptLearner(backbone, classnames, self.method_cfg), backbone)
