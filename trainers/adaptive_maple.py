"""The study's AdaptiveMaPLe and AdaptiveBiDirMaPLe: MaPLe / BiDirMaPLe plus per-task gates.

Per-task gates (free logits, no input): **length gates** g (one per context token, N_CTX_MAX of
them) and **depth gates** w (one per deep-prompt layer 1..PROMPT_DEPTH_MAX-1). The default gate
is `sigmoid` at logit GATE.SIGMOID.INIT_LOGIT 1.0 (g = 0.73), as the study's `ones` init; soft in
training, and hard at test by default (GATE.TEST_MODE "" means the trainer's default, "hard"
here): a gate counts as 1 where g > GATE.THRESHOLD, else 0, as the study's `gates > 0.5`.

Which prompts each gate scales follows the study's code, trainer by trainer:

- AdaptiveBiDirMaPLe, ImprovedAdaptiveBiDirMaPLe: length gates on the shallow context only (and
  so on the shallow visual prompt made from it); depth gates on the deep visual prompts only (the
  study's text encoder for it drops them);
- AdaptiveTrain, AdaptiveFreezeEarly, AdaptiveAlwaysFrozen, AdaptiveExplicitReg: length gates on
  the shallow context only; depth gates on the deep prompts of both towers;
- AdaptiveMaPLe: length gates on the shallow context and on the deep visual prompts
  (proj_j(g * t_j)), the deep text prompts stay ungated; depth gates on both towers.

A depth gate scales its layer's inserted prompt in training (w * prompt replaces the carried
tokens); at test with hard gates a layer whose gate is on gets its prompt unscaled and a layer
whose gate is off keeps the tokens carried from the layer below (the study's
`should_insert = depth_prob > 0.5`). Depth gate j belongs to layer j + 1 (the study's code
scales layer 1 by 1 and layer j by gate j - 2, so its last depth gate never receives a
gradient; see docs/coming_from_the_study.md).

TYPE full / length_only (depth fixed at FIXED_PROMPT_DEPTH) / depth_only (length fixed at
FIXED_N_CTX). Regularisers, as the study defines them:
    sparsity     LAMBDA_SPARSITY * sum_i g_i                  over the length gates
    smoothness   LAMBDA_DEPTH_SMOOTH * sum_j |a_{j+1} - a_j|  over the depth gates' logits a
each applied whenever its gates are learnable (the study's code added zero for both under
length_only and depth_only). Keys `TRAINER.ADAPTIVE_MAPLE.*`, `TRAINER.ADAPTIVE_BIDIR_MAPLE.*`.
"""
from yacs.config import CfgNode as CN

from gates.config_spec import above, at_least, between, declare, one_of, unchecked

from .bidir_maple import BiDirMaPLe, BiDirMaPLePromptLearner
from .deep_prompting import DeepPromptCLIP, Prompts
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
    node.LAMBDA_SPARSITY = 0.01  # weight of sum g over the length gates
    node.LAMBDA_DEPTH_SMOOTH = 0.001  # weight of sum |a_{j+1} - a_j| over the depth gates' logits
    node.TYPE = "full"  # full, length_only, depth_only
    node.FIXED_N_CTX = 4  # context length when the length is not gated (depth_only)
    node.FIXED_PROMPT_DEPTH = 6  # prompt depth when the depth is not gated (length_only)
    declare(node, N_CTX_MAX=at_least(1), CTX_INIT=unchecked("words of the initial context"), PREC=one_of(*PRECISIONS),
            PROMPT_DEPTH_MAX=at_least(1), LAMBDA_SPARSITY=at_least(0), LAMBDA_DEPTH_SMOOTH=at_least(0),
            TYPE=one_of(*TYPES), FIXED_N_CTX=at_least(1), FIXED_PROMPT_DEPTH=at_least(1))


def add_gated_keys(node):
    """Keys of the adaptive (gated) nodes only."""
    add_adaptive_keys(node)
    # True: the image encoder's final LayerNorm (ln_post) is trained with the prompts, as in the
    # study's AdaptiveMaPLe / AdaptiveBiDirMaPLe, whose prompt learner holds it (`shared_proj_out`).
    node.TRAIN_VISUAL_LN_POST = False


def add_bidir_keys(node):
    """The BiDirMaPLe keys of the study's adaptive BiDir nodes (no cycle warm-up there)."""
    node.BIDIRECTIONAL = True
    node.CYCLE_LOSS_WEIGHT = 0.1
    node.CYCLE_WARMUP_EPOCHS = 0
    node.MAPPING_HIDDEN_DIM_RATIO = 0.5
    node.USE_EMA = False
    node.EMA_DECAY = 0.999
    node.EMA_START_EPOCH = 5
    # class_mean: the study's code, proj(mean of the context tokens) repeated once per class;
    # tokens: MaPLe's proj(ctx), one visual token per context token (see trainers/bidir_maple.py).
    node.SHALLOW_VISION_PROMPT = "class_mean"
    declare(node, CYCLE_LOSS_WEIGHT=at_least(0), CYCLE_WARMUP_EPOCHS=at_least(0),
            MAPPING_HIDDEN_DIM_RATIO=above(0), EMA_DECAY=between(0, 1), EMA_START_EPOCH=at_least(0),
            SHALLOW_VISION_PROMPT=one_of("class_mean", "tokens"))


class AdaptiveGates:
    """Mixin for a MaPLe-family prompt learner: per-task length and depth gates.

    Needs `self.length_gate` / `self.depth_gate` (gates.AppliedGate or None) and
    `self.depth_gates_text` (whether the depth gates also scale the text tower's deep prompts) set
    by the constructor.
    """

    def task_gate(self, head):
        if head is None:
            return None
        # Per-task gates read no input: one row of a dummy condition.
        return head(self.ctx.new_zeros(1, 1))

    def forward(self):
        g_len = self.task_gate(self.length_gate)
        text, vision = self.gated_prompts(g_len)
        prompts = Prompts(text=self.template(text[0]), text_deep=text[1:], vision=vision[0], vision_deep=vision[1:])
        g_depth = self.task_gate(self.depth_gate)
        if g_depth is not None:
            prompts.vision_gates = g_depth
            prompts.text_gates = g_depth if self.depth_gates_text else None
            prompts.gate_mode = self.depth_gate_mode()
        self.last_gates = {"length": g_len, "depth": g_depth}
        return prompts

    def gated_prompts(self, g_len):
        """(text, vision) prompts per depth with the length gates on the shallow context only."""
        text = self.text_prompts()
        if g_len is not None:
            text = [text[0] * g_len[0].unsqueeze(-1).to(text[0].dtype), *text[1:]]
        return self.couple(text)

    def depth_gate_mode(self):
        """"scale" (w * prompt) in training and with soft test gates; with hard test gates,
        "blend": a layer whose gate is 1 gets its prompt, one whose gate is 0 keeps the carried
        tokens. A value imposed by a probe (`override`, not thresholded) scales, as in training."""
        head = self.depth_gate
        if self.training or head.test_mode == "soft" or head.override is not None:
            return "scale"
        return "blend"

    def regularisers(self, lambda_sparsity, lambda_smooth):
        """Named regulariser terms on the last forward's gates (formulas in the module docstring);
        a term is absent when its weight is 0 or its gates are not learnable here."""
        terms = {}
        g_len = self.last_gates["length"]
        if lambda_sparsity > 0 and g_len is not None:
            terms["sparsity"] = lambda_sparsity * g_len.sum()
        if lambda_smooth > 0 and self.depth_gate is not None and self.last_gates["depth"] is not None:
            # The study smooths the depth logits (its raw `depth_weights`); a gate without logits
            # (the constant gate) is smoothed on its values.
            w = getattr(self.depth_gate.gate, "last_logits", None)
            w = self.last_gates["depth"] if w is None else w
            if w.shape[-1] > 1:
                terms["depth_smooth"] = lambda_smooth * (w[:, 1:] - w[:, :-1]).abs().sum()
        return terms


def adaptive_shape(c):
    if c.TYPE not in TYPES:
        raise ValueError(f"TYPE must be one of {TYPES}, got {c.TYPE!r}")
    n_ctx = c.FIXED_N_CTX if c.TYPE == "depth_only" else c.N_CTX_MAX
    depth = c.FIXED_PROMPT_DEPTH if c.TYPE == "length_only" else c.PROMPT_DEPTH_MAX
    return n_ctx, depth, c.TYPE != "depth_only", c.TYPE != "length_only"


def build_adaptive_gates(learner, c, build_gate, depth_gates_text, backbone):
    n_ctx, depth, gate_length, gate_depth = adaptive_shape(c)
    learner.length_gate = build_gate(n_ctx, 1, "length") if gate_length else None
    learner.depth_gate = build_gate(depth - 1, 1, "depth") if gate_depth and depth > 1 else None
    learner.depth_gates_text = depth_gates_text
    if c.TRAIN_VISUAL_LN_POST:
        # The study's learners keep `self.shared_proj_out = clip_model.visual.ln_post` (never used
        # in their forward): being inside the prompt learner, it is trained with the prompts.
        learner.shared_proj_out = backbone.clip.visual.ln_post
        learner.shared_proj_out.requires_grad_(True)


class AdaptiveMaPLePromptLearner(AdaptiveGates, MaPLePromptLearner):
    def __init__(self, backbone, classnames, c, build_gate):
        n_ctx, depth, _, _ = adaptive_shape(c)
        super().__init__(backbone, classnames, n_ctx, c.CTX_INIT, depth)
        build_adaptive_gates(self, c, build_gate, depth_gates_text=True, backbone=backbone)

    def gated_prompts(self, g_len):
        """The study's AdaptiveMaPLe: the text tower gets the gated shallow context and the
        ungated deep text prompts; every visual prompt is projected from gated text
        (proj(g * ctx), proj_j(g * t_j))."""
        text = self.text_prompts()
        if g_len is None:
            return self.couple(text)
        g = g_len[0].unsqueeze(-1).to(text[0].dtype)
        gated = [t * g for t in text]
        _, vision = self.couple(gated)
        return [gated[0], *text[1:]], vision


class AdaptiveBiDirMaPLePromptLearner(AdaptiveGates, BiDirMaPLePromptLearner):
    def __init__(self, backbone, classnames, c, build_gate, depth_gates_text=False):
        n_ctx, depth, _, _ = adaptive_shape(c)
        super().__init__(backbone, classnames, n_ctx, c.CTX_INIT, depth, c.BIDIRECTIONAL, c.MAPPING_HIDDEN_DIM_RATIO,
                         shallow_vision=c.SHALLOW_VISION_PROMPT, cycle_on="coupled")
        build_adaptive_gates(self, c, build_gate, depth_gates_text, backbone)


class AdaptiveTrainer(GatedTrainer):
    """Shared by the adaptive trainers: per-task gates, hard at test, regularisers as named loss terms."""

    TARGETS = {"length": "mask", "depth": "mask"}
    CONDS = ("none",)
    DEFAULT_GATE = "sigmoid"
    DEFAULT_TARGET = "length"
    DEFAULT_COND = "none"
    DEFAULT_TEST_MODE = "hard"

    def compute_losses(self, output, label):
        losses = super().compute_losses(output, label)
        c = self.method_cfg
        losses.update(self.model.prompt_learner.regularisers(c.LAMBDA_SPARSITY, c.LAMBDA_DEPTH_SMOOTH))
        return losses


@TRAINER_REGISTRY.register()
class AdaptiveMaPLe(AdaptiveTrainer, MaPLe):
    PARENT_TRAINER = "MaPLe"
    CFG_NODE = "ADAPTIVE_MAPLE"

    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.ADAPTIVE_MAPLE = CN()
        add_gated_keys(cfg.TRAINER.ADAPTIVE_MAPLE)

    def build_custom_clip(self, cfg, classnames, backbone):
        _ = self.gate_cond
        return DeepPromptCLIP(AdaptiveMaPLePromptLearner(backbone, classnames, self.method_cfg, self.build_gate),
                              backbone)


@TRAINER_REGISTRY.register()
class AdaptiveBiDirMaPLe(AdaptiveTrainer, BiDirMaPLe):
    """The study's main testbed. Its variants (trainers/adaptive_controls.py) change only where
    the depth gates act (`DEPTH_GATES_TEXT`) and which remedies' settings they bring."""

    PARENT_TRAINER = "BiDirMaPLe"
    CFG_NODE = "ADAPTIVE_BIDIR_MAPLE"
    DEPTH_GATES_TEXT = False  # the study's AdaptiveBiDirMaPLe text encoder drops the depth gates

    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.ADAPTIVE_BIDIR_MAPLE = CN()
        node = cfg.TRAINER.ADAPTIVE_BIDIR_MAPLE
        add_gated_keys(node)
        add_bidir_keys(node)
        add_improved_keys(node)

    def build_custom_clip(self, cfg, classnames, backbone):
        _ = self.gate_cond
        learner = AdaptiveBiDirMaPLePromptLearner(backbone, classnames, self.method_cfg, self.build_gate,
                                                  depth_gates_text=self.DEPTH_GATES_TEXT)
        return DeepPromptCLIP(learner, backbone)

    @staticmethod
    def resolve_config(cfg):
        from .adaptive_controls import resolve_study_controls

        resolve_study_controls(cfg)


def add_improved_keys(node):
    """The study's ImprovedAdaptiveBiDirMaPLe keys (on the shared ADAPTIVE_BIDIR_MAPLE node).

    The study reads them only in ImprovedAdaptiveBiDirMaPLe; here AdaptiveBiDirMaPLe honours them
    too (each is off by default). They become remedies' settings (trainers/adaptive_controls.py).
    """
    node.USE_GRADIENT_SCALING = False  # dL/da * min(1 / (g (1 - g)), GRADIENT_SCALE_MAX) on the gates
    node.GRADIENT_SCALE_MAX = 10.0
    node.USE_ENTROPY_REG = False  # - LAMBDA_ENTROPY * sum H(g): pushes the gates towards 0.5 (flatten)
    node.LAMBDA_ENTROPY = 0.01
    # Epochs (from 0) during which the gates do not move: -1 = the trainer's own (0 for
    # AdaptiveBiDirMaPLe, whose study code tried a 2-epoch freeze that froze nothing; 2 for
    # ImprovedAdaptiveBiDirMaPLe, whose freeze worked).
    node.GATE_WARMUP_EPOCHS = -1
    # The study's AdaptiveBiDirMaPLe builds its SGD with Nesterov momentum; False: OPTIM.SGD_NESTEROV decides.
    node.NESTEROV = True
    # The study's AdaptiveBiDirMaPLe and ImprovedAdaptiveBiDirMaPLe clip the gradient L2 norm to 1
    # before every step (fp32; see docs/coming_from_the_study.md for amp): sets OPTIM.GRAD_CLIP
    # (0 leaves OPTIM.GRAD_CLIP to decide).
    node.GRAD_CLIP = 1.0
    declare(node, GRADIENT_SCALE_MAX=at_least(1, "the largest factor on the gate gradient"),
            LAMBDA_ENTROPY=at_least(0), GATE_WARMUP_EPOCHS=at_least(-1, "-1: the trainer's own"),
            GRAD_CLIP=at_least(0, "the largest gradient L2 norm; 0: OPTIM.GRAD_CLIP decides"))
