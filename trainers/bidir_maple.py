"""BiDirMaPLe, the study's ungated baseline: MaPLe plus bidirectional coupling per depth.

For each deep layer j (text prompt t, visual prompt v = proj_j(t) as in MaPLe):
    t' = s(alpha_j) t + (1 - s(alpha_j)) V2L_j(v)
    v' = s(beta_j)  v + (1 - s(beta_j))  L2V_j(t')
with MLPs L2V (W_t -> W_t/2 -> W_v) and V2L (W_v -> W_v/2 -> W_t), and a cycle-consistency
loss mean_j MSE(t_j, V2L_j(L2V_j(t_j))) weighted by CYCLE_LOSS_WEIGHT once
CYCLE_WARMUP_EPOCHS have passed; optionally an EMA of the prompts is evaluated. With
BIDIRECTIONAL False and weight 0 it is MaPLe exactly. Keys `TRAINER.BIDIR_MAPLE.*`.
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
from .prompt_trainer import PRECISIONS


def mapping_mlp(d_in, d_out, dtype, hidden_ratio=0.5):
    hidden = max(int(d_in * hidden_ratio), 1)
    return nn.Sequential(nn.Linear(d_in, hidden, dtype=dtype), nn.GELU(), nn.Linear(hidden, d_out, dtype=dtype))


class BiDirMaPLePromptLearner(MaPLePromptLearner):
    def __init__(self, backbone, classnames, n_ctx, ctx_init, depth, bidirectional, hidden_ratio=0.5):
        super().__init__(backbone, classnames, n_ctx, ctx_init, depth)
        self.bidirectional = bidirectional
        if self.bidirectional:
            n_deep = depth - 1
            wt, wv, dtype = backbone.ctx_dim, backbone.vis_dim, backbone.dtype
            self.l2v_mappings = nn.ModuleList(mapping_mlp(wt, wv, dtype, hidden_ratio) for _ in range(n_deep))
            self.v2l_mappings = nn.ModuleList(mapping_mlp(wv, wt, dtype, hidden_ratio) for _ in range(n_deep))
            # Mixing logits start at 0.5 (s = 0.62: mostly the prompt's own tower), as in the study.
            self.alpha_params = nn.ParameterList(nn.Parameter(torch.tensor(0.5, dtype=dtype)) for _ in range(n_deep))
            self.beta_params = nn.ParameterList(nn.Parameter(torch.tensor(0.5, dtype=dtype)) for _ in range(n_deep))

    def couple(self, text):
        text, vision = super().couple(text)
        if not self.bidirectional:
            return text, vision
        for j in range(1, len(text)):
            a, b = torch.sigmoid(self.alpha_params[j - 1]), torch.sigmoid(self.beta_params[j - 1])
            t = a * text[j] + (1 - a) * self.v2l_mappings[j - 1](vision[j])
            vision[j] = b * vision[j] + (1 - b) * self.l2v_mappings[j - 1](t)
            text[j] = t
        return text, vision

    def cycle_loss(self):
        """mean_j MSE(t_j, V2L_j(L2V_j(t_j))) over the deep text prompts."""
        deep_text = self.text_prompts()[1:]
        if not self.bidirectional or len(deep_text) == 0:
            return None
        terms = [F.mse_loss(v2l(l2v(t)), t) for t, l2v, v2l in zip(deep_text, self.l2v_mappings, self.v2l_mappings)]
        return torch.stack(terms).mean()


@TRAINER_REGISTRY.register()
class BiDirMaPLe(MaPLe):
    CFG_NODE = "BIDIR_MAPLE"

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
        declare(cfg.TRAINER.BIDIR_MAPLE, N_CTX=at_least(1), CTX_INIT=unchecked("words of the initial context"),
                PREC=one_of(*PRECISIONS), PROMPT_DEPTH=at_least(1, "1: shallow prompts only"),
                CYCLE_LOSS_WEIGHT=at_least(0), CYCLE_WARMUP_EPOCHS=at_least(0), EMA_DECAY=between(0, 1),
                EMA_START_EPOCH=at_least(0))

    def build_custom_clip(self, cfg, classnames, backbone):
        c = cfg.TRAINER.BIDIR_MAPLE
        learner = BiDirMaPLePromptLearner(backbone, classnames, c.N_CTX, c.CTX_INIT, c.PROMPT_DEPTH, c.BIDIRECTIONAL)
        return DeepPromptCLIP(learner, backbone)

    def build_model(self):
        super().build_model()
        c = self.method_cfg
        self.ema = ParameterEMA(self.model.prompt_learner, c.EMA_DECAY) if c.USE_EMA else None

    def cycle_weight(self):
        """CYCLE_LOSS_WEIGHT after the warm-up epochs, 0 before."""
        c = self.method_cfg
        return c.CYCLE_LOSS_WEIGHT if self.epoch >= c.CYCLE_WARMUP_EPOCHS else 0.0

    def compute_losses(self, output, label):
        losses = super().compute_losses(output, label)
        weight = self.cycle_weight()
        cycle = self.model.prompt_learner.cycle_loss()
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
