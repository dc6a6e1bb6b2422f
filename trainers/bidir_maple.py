"""BiDirMaPLe, the study's ungated baseline: MaPLe plus bidirectional coupling per depth.

For each deep layer j (text prompt t, visual prompt v = proj_j(t) as in MaPLe):
    t' = s(alpha_j) t + (1 - s(alpha_j)) V2L_j(v)
    v' = s(beta_j)  v + (1 - s(beta_j))  L2V_j(t')
with MLPs L2V (W_t -> W_t/2 -> W_v) and V2L (W_v -> W_v/2 -> W_t), Linear-ReLU-Linear as the
study's CrossModalMappingNetwork, and a cycle-consistency loss mean_j MSE(t_j, V2L_j(L2V_j(t_j)))
weighted by CYCLE_LOSS_WEIGHT, ramped up linearly over the first CYCLE_WARMUP_EPOCHS epochs
(weight * epoch / CYCLE_WARMUP_EPOCHS before, as the study's CycleLossScheduler); optionally an
EMA of the prompts is evaluated. With BIDIRECTIONAL False and weight 0 it is MaPLe exactly.
Keys `TRAINER.BIDIR_MAPLE.*`.

The study's other trainers built on this model differ in three places, each a constructor
argument here (trainers/adaptive_maple.py, trainers/param_matched.py set them):
- `shallow_vision`: "tokens" (MaPLe, BiDirMaPLe: proj(ctx), one visual token per context token)
  or "class_mean" (the study's adaptive BiDir trainers and ParamMatched: proj(mean of the context
  tokens), repeated once per class, as their `self.proj(effective_ctx.mean(1))` does);
- `cycle_on`: "raw" (BiDirMaPLe: the learnable deep text prompts) or "coupled" (the adaptive BiDir
  trainers: the deep text prompts after the coupling, t');
- `couple_deep`: False keeps the mapping MLPs (trained by the cycle loss only) but passes the
  deep prompts through uncoupled (the study's ParamMatched).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from gates.config_spec import at_least, between, declare, one_of, unchecked

from .deep_prompting import DeepPromptCLIP
from .ema import ParameterEMA
from .engine import TRAINER_REGISTRY
from .maple import MaPLe, MaPLePromptLearner
from .prompt_trainer import PRECISIONS, ReleasedLayout
from .study_keys import apply_study_grad_clip

SHALLOW_VISION = ("tokens", "class_mean")
CYCLE_ON = ("raw", "coupled")


MIN_HIDDEN = 64


def mapping_mlp(d_in, d_out, dtype, hidden_ratio=0.5):
    """Linear(d_in, h) - ReLU - Linear(h, d_out), h = max(int(d_in * hidden_ratio), 64): the
    study's cross-modal mapping (CrossModalMappingNetwork). The floor of 64 is its adaptive
    trainers'; its BiDirMaPLe has none, which differs only for towers narrower than 128."""
    hidden = max(int(d_in * hidden_ratio), MIN_HIDDEN)
    return nn.Sequential(nn.Linear(d_in, hidden, dtype=dtype), nn.ReLU(), nn.Linear(hidden, d_out, dtype=dtype))


class BiDirMaPLePromptLearner(MaPLePromptLearner):
    def __init__(self, backbone, classnames, n_ctx, ctx_init, depth, bidirectional, hidden_ratio=0.5,
                 shallow_vision="tokens", cycle_on="raw", couple_deep=True):
        super().__init__(backbone, classnames, n_ctx, ctx_init, depth)
        if shallow_vision not in SHALLOW_VISION:
            raise ValueError(f"the shallow visual prompt must be one of {SHALLOW_VISION}, got {shallow_vision!r}")
        if cycle_on not in CYCLE_ON:
            raise ValueError(f"the cycle loss acts on one of {CYCLE_ON}, got {cycle_on!r}")
        self.bidirectional = bidirectional
        self.shallow_vision_mode = shallow_vision
        self.cycle_on = cycle_on
        self.couple_deep = couple_deep
        self.last_deep_text = None  # the deep text prompts of the last forward (after coupling)
        if self.bidirectional:
            n_deep = depth - 1
            wt, wv, dtype = backbone.ctx_dim, backbone.vis_dim, backbone.dtype
            self.l2v_mappings = nn.ModuleList(mapping_mlp(wt, wv, dtype, hidden_ratio) for _ in range(n_deep))
            self.v2l_mappings = nn.ModuleList(mapping_mlp(wv, wt, dtype, hidden_ratio) for _ in range(n_deep))
            # Mixing logits start at 0.5 (s = 0.62: mostly the prompt's own tower), as in the study.
            self.alpha_params = nn.ParameterList(nn.Parameter(torch.tensor(0.5, dtype=dtype)) for _ in range(n_deep))
            self.beta_params = nn.ParameterList(nn.Parameter(torch.tensor(0.5, dtype=dtype)) for _ in range(n_deep))

    def shallow_vision(self, ctx):
        """tokens: proj(ctx), (n_ctx, W_vis). class_mean: proj(mean over the context tokens),
        repeated once per class, (C, W_vis): C identical visual tokens, the deep visual prompts
        replacing the last n_ctx of them (the study's adaptive BiDir trainers; needs C >= n_ctx)."""
        if self.shallow_vision_mode == "tokens":
            return super().shallow_vision(ctx)
        n_cls = self.template.token_prefix.shape[0]
        if n_cls < ctx.shape[0]:
            raise ValueError(f"the class-mean shallow visual prompt gives one token per class ({n_cls}) and the deep "
                             f"visual prompts replace the last {ctx.shape[0]} of them; use at least {ctx.shape[0]} "
                             "classes or SHALLOW_VISION_PROMPT tokens")
        return self.proj(ctx.mean(0)).unsqueeze(0).expand(n_cls, -1)

    def couple(self, text):
        text, vision = super().couple(text)
        if self.bidirectional and self.couple_deep:
            for j in range(1, len(text)):
                a, b = torch.sigmoid(self.alpha_params[j - 1]), torch.sigmoid(self.beta_params[j - 1])
                t = a * text[j] + (1 - a) * self.v2l_mappings[j - 1](vision[j])
                vision[j] = b * vision[j] + (1 - b) * self.l2v_mappings[j - 1](t)
                text[j] = t
        self.last_deep_text = text[1:]
        return text, vision

    def cycle_loss(self):
        """mean_j MSE(t_j, V2L_j(L2V_j(t_j))) over the deep text prompts: the learnable ones
        (cycle_on "raw"), or those of the last forward after the coupling ("coupled")."""
        if not self.bidirectional:
            return None
        deep_text = self.last_deep_text if self.cycle_on == "coupled" else self.text_prompts()[1:]
        if deep_text is None:
            raise RuntimeError("the cycle loss on the coupled prompts needs a forward pass first")
        if len(deep_text) == 0:
            return None
        terms = [F.mse_loss(v2l(l2v(t)), t) for t, l2v, v2l in zip(deep_text, self.l2v_mappings, self.v2l_mappings)]
        return torch.stack(terms).mean()


@TRAINER_REGISTRY.register()
class BiDirMaPLe(MaPLe):
    CFG_NODE = "BIDIR_MAPLE"
    # The study's code saves as MaPLe's does; its mapping MLPs are CrossModalMappingNetwork
    # modules, whose Sequential is their attribute `mapping`.
    RELEASED_LAYOUTS = (ReleasedLayout("MultiModalPromptLearner", "the study's BiDirMaPLe code",
                                       prefix="prompt_learner.",
                                       renames=((r"^(l2v|v2l)_mappings\.(\d+)\.mapping\.", r"\1_mappings.\2."),)),)

    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.BIDIR_MAPLE = CN()
        cfg.TRAINER.BIDIR_MAPLE.N_CTX = 2
        cfg.TRAINER.BIDIR_MAPLE.CTX_INIT = "a photo of a"
        cfg.TRAINER.BIDIR_MAPLE.PREC = "fp16"
        cfg.TRAINER.BIDIR_MAPLE.PROMPT_DEPTH = 9
        cfg.TRAINER.BIDIR_MAPLE.BIDIRECTIONAL = True  # enable the bidirectional coupling
        cfg.TRAINER.BIDIR_MAPLE.CYCLE_LOSS_WEIGHT = 0.1  # weight of the cycle-consistency loss
        cfg.TRAINER.BIDIR_MAPLE.CYCLE_WARMUP_EPOCHS = 2  # epochs before the cycle loss counts
        cfg.TRAINER.BIDIR_MAPLE.USE_EMA = False  # evaluate an EMA of the prompts
        cfg.TRAINER.BIDIR_MAPLE.EMA_DECAY = 0.999
        cfg.TRAINER.BIDIR_MAPLE.EMA_START_EPOCH = 5
        # The study's BiDirMaPLe clips the gradient L2 norm to 1 before every step: sets
        # OPTIM.GRAD_CLIP (0 leaves OPTIM.GRAD_CLIP to decide).
        cfg.TRAINER.BIDIR_MAPLE.GRAD_CLIP = 1.0
        declare(cfg.TRAINER.BIDIR_MAPLE, N_CTX=at_least(1), CTX_INIT=unchecked("words of the initial context"),
                PREC=one_of(*PRECISIONS), PROMPT_DEPTH=at_least(1, "1: shallow prompts only"),
                CYCLE_LOSS_WEIGHT=at_least(0), CYCLE_WARMUP_EPOCHS=at_least(0), EMA_DECAY=between(0, 1),
                EMA_START_EPOCH=at_least(0),
                GRAD_CLIP=at_least(0, "the largest gradient L2 norm; 0: OPTIM.GRAD_CLIP decides"))

    @staticmethod
    def resolve_config(cfg):
        if cfg.TRAINER.NAME == "BiDirMaPLe":
            apply_study_grad_clip(cfg, "TRAINER.BIDIR_MAPLE")

    def build_custom_clip(self, cfg, classnames, backbone):
        c = cfg.TRAINER.BIDIR_MAPLE
        learner = BiDirMaPLePromptLearner(backbone, classnames, c.N_CTX, c.CTX_INIT, c.PROMPT_DEPTH, c.BIDIRECTIONAL)
        return DeepPromptCLIP(learner, backbone)

    def build_model(self):
        super().build_model()
        c = self.method_cfg
        self.ema = ParameterEMA(self.model.prompt_learner, c.EMA_DECAY) if c.USE_EMA else None

    def cycle_weight(self):
        """CYCLE_LOSS_WEIGHT * epoch / CYCLE_WARMUP_EPOCHS during the warm-up (epochs from 0),
        CYCLE_LOSS_WEIGHT after it: the study's linear CycleLossScheduler."""
        c = self.method_cfg
        warmup = c.CYCLE_WARMUP_EPOCHS
        if warmup > 0 and self.epoch < warmup:
            return c.CYCLE_LOSS_WEIGHT * self.epoch / warmup
        return c.CYCLE_LOSS_WEIGHT

    def compute_losses(self, output, label):
        losses = super().compute_losses(output, label)
        weight = self.cycle_weight()
        cycle = self.model.prompt_learner.cycle_loss()
        # What "cycle" was multiplied by (the diagnostics report the study's unweighted cycle loss).
        self.loss_weights = {"cycle": weight}
        if weight > 0 and cycle is not None:
            losses["cycle"] = weight * cycle
        return losses

    def after_step(self):
        super().after_step()
        if self.ema is not None and self.epoch >= self.method_cfg.EMA_START_EPOCH:
            self.ema.update()

    def test(self, split=None):
        if self.ema is None:
            return super().test(split)
        with self.ema.applied():
            return super().test(split)

    def training_state(self):
        state = super().training_state()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_training_state(self, state):
        super().load_training_state(state)
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
