"""MaPLe (Khattak et al., CVPR 2023): multi-modal prompts coupled from language to vision.

Text prompts as CoOp (`ctx`); the shallow visual prompt is `proj(ctx)`; layers 1..J-1 of both
towers replace their prompt tokens with new learnable text prompts `compound_prompts_text[j]`
and their projections `compound_prompt_projections[j](...)` into the vision width. Keys
`TRAINER.MAPLE.{N_CTX, CTX_INIT, PREC, PROMPT_DEPTH}`; parameter names follow MaPLe's so its
released checkpoints load. As in MaPLe's code, the deep projections 1..J-1 start as copies of
one initialised Linear (they are identical at step 0 and diverge in training), and parameters
are created in MaPLe's order (context, proj, deep prompts, projections), so the same seed gives
the same initial values. Unlike the original: any precision, any open_clip ViT width, and only
learnable tensors in checkpoints.
"""
import copy

import torch.nn as nn
from yacs.config import CfgNode as CN

from gates.config_spec import at_least, declare, one_of, unchecked

from .deep_prompting import DeepPromptCLIP, Prompts, check_depth, maple_context, n_layers, prompt_tokens
from .engine import TRAINER_REGISTRY
from .prompt_trainer import PRECISIONS, PromptTrainer, ReleasedLayout
from .prompting import ClassPromptTemplate


class MaPLePromptLearner(nn.Module):
    """MaPLe's `MultiModalPromptLearner` (its `PromptLearner`): the shallow context `ctx`, the
    deeper text prompts `compound_prompts_text` and the language-to-vision projections, under
    the names of MaPLe's checkpoints."""

    def __init__(self, backbone, classnames, n_ctx, ctx_init, depth):
        super().__init__()
        if not backbone.is_vit:
            raise ValueError("MaPLe prompts the vision transformer; use a ViT backbone (e.g. ViT-B/16)")
        text_layers, vision_layers = n_layers(backbone)
        check_depth(depth, min(text_layers, vision_layers), "TRAINER.MAPLE.PROMPT_DEPTH")
        if depth < 1:
            raise ValueError("TRAINER.MAPLE.PROMPT_DEPTH must be >= 1 (1 = shallow prompts only)")
        ctx_vectors, prompt_prefix = maple_context(backbone, n_ctx, ctx_init)
        print(f'Initial context: "{prompt_prefix}"')
        print(f"Number of MaPLe context words (tokens): {n_ctx}")
        self.ctx = nn.Parameter(ctx_vectors)
        self.proj = nn.Linear(backbone.ctx_dim, backbone.vis_dim, dtype=backbone.dtype)
        self.compound_prompts_text = prompt_tokens(depth - 1, n_ctx, backbone.ctx_dim, backbone.dtype)
        self.compound_prompt_projections = cloned_linears(depth - 1, backbone.ctx_dim, backbone.vis_dim,
                                                          backbone.dtype)
        self.template = ClassPromptTemplate(backbone, classnames, n_ctx, prompt_prefix)

    def text_prompts(self):
        """The learnable text prompts of depths 0..J-1 (the shallow context first)."""
        return [self.ctx, *self.compound_prompts_text]

    def deep_prompt_layers(self):
        """The learnable prompt tensor of each depth 0..J-1 (the diagnostics' gradient slope
        across layers reads their gradients)."""
        return [self.ctx, *self.compound_prompts_text]

    def couple(self, text):
        """(text, vision) prompts per depth: vision_j is projected from text_j (MaPLe's coupling)."""
        deep = [f(t) for f, t in zip(self.compound_prompt_projections, text[1:])]
        return list(text), [self.shallow_vision(text[0]), *deep]

    def shallow_vision(self, ctx):
        """The shallow visual prompt tokens from the (n_ctx, W_text) context: proj(ctx), (n_ctx, W_vis)."""
        return self.proj(ctx)

    def coupled(self):
        return self.couple(self.text_prompts())

    def forward(self):
        text, vision = self.coupled()
        return Prompts(text=self.template(text[0]), text_deep=text[1:], vision=vision[0], vision_deep=vision[1:])


def cloned_linears(count, d_in, d_out, dtype):
    """`count` Linear(d_in, d_out) layers that start as copies of one freshly initialised layer.

    MaPLe's reference code builds its deep-prompt projections this way (`_get_clones` of one
    `nn.Linear`), so they share their initial weights and consume the random stream of one
    layer; initialising each one separately would give other values for layers 1..J-1 under the
    same seed. The layer is drawn even when count is 0, as the reference does, so that whatever
    is initialised after it sees the same random stream.
    """
    first = nn.Linear(d_in, d_out, dtype=dtype)
    return nn.ModuleList(copy.deepcopy(first) for _ in range(max(count, 0)))


@TRAINER_REGISTRY.register()
class MaPLe(PromptTrainer):
    """MaPLe's trainer `MaPLe(TrainerX)`; its `CustomCLIP` is DeepPromptCLIP."""

    CFG_NODE = "MAPLE"
    # MaPLe's code registers its whole CustomCLIP as "MultiModalPromptLearner": the learner's
    # tensors under "prompt_learner.", beside the frozen image and text encoders.
    RELEASED_LAYOUTS = (ReleasedLayout("MultiModalPromptLearner", "MaPLe's code", prefix="prompt_learner."),)

    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.MAPLE = CN()
        cfg.TRAINER.MAPLE.N_CTX = 2  # number of context vectors
        cfg.TRAINER.MAPLE.CTX_INIT = "a photo of a"  # initialization words
        cfg.TRAINER.MAPLE.PREC = "fp16"  # fp16, fp32, amp
        cfg.TRAINER.MAPLE.PROMPT_DEPTH = 9  # max 12, min 1; 1 = shallow prompts only
        # (the maximum, the backbone's layer count, is checked when the backbone is built)
        declare(cfg.TRAINER.MAPLE, N_CTX=at_least(1), CTX_INIT=unchecked("words of the initial context"),
                PREC=one_of(*PRECISIONS), PROMPT_DEPTH=at_least(1, "1: shallow prompts only"))

    def build_custom_clip(self, cfg, classnames, backbone):
        c = cfg.TRAINER.MAPLE
        return DeepPromptCLIP(MaPLePromptLearner(backbone, classnames, c.N_CTX, c.CTX_INIT, c.PROMPT_DEPTH),
                              backbone)
