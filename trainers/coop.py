"""CoOp (Zhou et al., IJCV 2022): learnable context vectors in front of each classname.

prompt_c = [SOS] ctx_1 .. ctx_n classname_c . [EOS]; the context is shared by all classes, or
class-specific with CSC; logits = exp(logit_scale) * cos(image feature, text feature_c).
Keys `TRAINER.COOP.{N_CTX, CSC, CTX_INIT, PREC, CLASS_TOKEN_POSITION}` as in CoOp.
"""
import torch.nn as nn
from yacs.config import CfgNode as CN

from gates.config_spec import at_least, declare, one_of, unchecked

from .backbone.adapter import cosine_logits
from .engine import TRAINER_REGISTRY
from .feature_cache import FeatureCacheMixin, image_features_of
from .prompt_trainer import PRECISIONS, PromptTrainer
from .prompting import CLASS_TOKEN_POSITIONS, ClassPromptTemplate, init_context


class CoOpPromptLearner(nn.Module):
    """CoOp's `PromptLearner`: the learnable context `ctx` (the name CoOp's checkpoints use) and
    the class prompts (CoOp's `token_prefix` / `token_suffix` are in `ClassPromptTemplate`)."""

    def __init__(self, backbone, classnames, n_ctx, ctx_init="", csc=False, position="end"):
        super().__init__()
        # With CSC and CTX_INIT every class starts from the init words (CoOp silently
        # ignored CSC when CTX_INIT was set).
        n_cls = len(classnames) if csc else None
        ctx_vectors, prompt_prefix, n_ctx = init_context(backbone, n_ctx, ctx_init, n_cls)
        print(f'Initial context: "{prompt_prefix}"')
        print(f"Number of context words (tokens): {n_ctx}")
        self.ctx = nn.Parameter(ctx_vectors)
        self.template = ClassPromptTemplate(backbone, classnames, n_ctx, prompt_prefix,
                                            context_key="TRAINER.COOP.N_CTX")
        self.position = position

    def forward(self):
        return self.template(self.ctx, self.position)


class CoOpCLIP(nn.Module):
    """CoOp's `CustomCLIP`: CLIP with CoOp's prompts, class text features from the learned context.
    CoOp's `TextEncoder` is `ClipBackbone.encode_text` (trainers/backbone/adapter.py)."""

    def __init__(self, prompt_learner, backbone):
        super().__init__()
        self.prompt_learner = prompt_learner
        self.backbone = backbone

    def text_features(self):
        prompts = self.prompt_learner()
        return self.backbone.encode_text(prompts, self.prompt_learner.template.eot_idx)

    def forward(self, image):
        image_features = image_features_of(self.backbone, image)  # (B, D) cached features pass through
        return cosine_logits(image_features, self.text_features(), self.backbone.logit_scale)


@TRAINER_REGISTRY.register()
class CoOp(FeatureCacheMixin, PromptTrainer):
    """CoOp's trainer `CoOp(TrainerX)`; what every prompt trainer shares is in PromptTrainer."""

    CFG_NODE = "COOP"

    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.COOP = CN()
        cfg.TRAINER.COOP.N_CTX = 16  # number of context vectors
        cfg.TRAINER.COOP.CSC = False  # class-specific context
        cfg.TRAINER.COOP.CTX_INIT = ""  # initialization words
        cfg.TRAINER.COOP.PREC = "fp16"  # fp16, fp32, amp
        cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"  # 'middle' or 'end' or 'front'
        declare(cfg.TRAINER.COOP, N_CTX=at_least(1), CTX_INIT=unchecked("words; their number replaces N_CTX"),
                PREC=one_of(*PRECISIONS), CLASS_TOKEN_POSITION=one_of(*CLASS_TOKEN_POSITIONS))

    def class_specific_keys(self):
        """With CSC the context `ctx` is (C, n_ctx, W): one row per class, meaningless for others."""
        return ["ctx"] if self.method_cfg.CSC else []

    def build_custom_clip(self, cfg, classnames, backbone):
        c = cfg.TRAINER.COOP
        learner = CoOpPromptLearner(backbone, classnames, c.N_CTX, c.CTX_INIT, c.CSC,
                                    c.CLASS_TOKEN_POSITION)
        return CoOpCLIP(learner, backbone)
