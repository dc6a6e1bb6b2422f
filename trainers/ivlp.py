"""IVLP: independent deep prompts in both towers (the MaPLe repository's baseline).

Text: learnable context as MaPLe's plus independent deep text prompts for layers
1..PROMPT_DEPTH_TEXT-1; vision: shallow visual prompt tokens plus deep ones for layers
1..PROMPT_DEPTH_VISION-1, with no coupling between the towers. Depth 0 switches a tower's
prompts off (the repository's language-only config). Keys
`TRAINER.IVLP.{N_CTX_VISION, N_CTX_TEXT, CTX_INIT, PREC, PROMPT_DEPTH_VISION, PROMPT_DEPTH_TEXT}`.
"""
import torch.nn as nn
from yacs.config import CfgNode as CN

from gates.config_spec import at_least, declare, declare_rule, one_of, unchecked

from .deep_prompting import DeepPromptCLIP, Prompts, check_depth, maple_context, n_layers, prompt_tokens
from .engine import TRAINER_REGISTRY
from .prompt_trainer import PRECISIONS, PromptTrainer
from .prompting import ClassPromptTemplate



def hand_written_prompt(ctx_init):
    """The fixed class prompt of a tower without text prompts: "<CTX_INIT> {classname}."."""
    return (ctx_init.replace("_", " ") + " {}.").strip()


class VisualPromptStack(nn.Module):
    """Shallow plus deep visual prompt tokens (VPT-deep): depth 0 means none."""

    def __init__(self, backbone, n_ctx, depth, key):
        super().__init__()
        _, vision_layers = n_layers(backbone)
        if depth > 0 and not backbone.is_vit:
            raise ValueError(f"{key}={depth} needs a ViT image tower; this backbone has a ResNet")
        check_depth(depth, vision_layers, key)
        self.visual_ctx = prompt_tokens(1 if depth > 0 and n_ctx > 0 else 0, n_ctx, backbone.vis_dim or 0,
                                        backbone.dtype)
        self.visual_deep = prompt_tokens(max(depth - 1, 0) if n_ctx > 0 else 0, n_ctx, backbone.vis_dim or 0,
                                         backbone.dtype)

    def shallow(self):
        return self.visual_ctx[0] if len(self.visual_ctx) else None

    def deep(self):
        return list(self.visual_deep)


class IVLPPromptLearner(nn.Module):
    """IVLP's `PromptLearner`: independent deep prompts for the text and the vision towers."""

    def __init__(self, backbone, classnames, cfg):
        super().__init__()
        text_layers, _ = n_layers(backbone)
        check_depth(cfg.PROMPT_DEPTH_TEXT, text_layers, "TRAINER.IVLP.PROMPT_DEPTH_TEXT")
        self.text_prompting = cfg.PROMPT_DEPTH_TEXT > 0 and cfg.N_CTX_TEXT > 0
        n_text = cfg.N_CTX_TEXT if self.text_prompting else 0
        if self.text_prompting:
            ctx_vectors, prompt_prefix = maple_context(backbone, n_text, cfg.CTX_INIT)
            self.ctx = nn.Parameter(ctx_vectors)
            print(f'Initial text context: "{prompt_prefix}"')
        else:
            prompt_prefix = cfg.CTX_INIT.replace("_", " ")
        self.compound_prompts_text = prompt_tokens(max(cfg.PROMPT_DEPTH_TEXT - 1, 0) if n_text else 0,
                                                   n_text, backbone.ctx_dim, backbone.dtype)
        self.vision = VisualPromptStack(backbone, cfg.N_CTX_VISION, cfg.PROMPT_DEPTH_VISION,
                                        "TRAINER.IVLP.PROMPT_DEPTH_VISION")
        self.template = ClassPromptTemplate(backbone, classnames, n_text, prompt_prefix,
                                            context_key="TRAINER.IVLP.N_CTX_TEXT")

    def forward(self):
        return Prompts(text=self.template(self.ctx) if self.text_prompting else None,
                       text_deep=list(self.compound_prompts_text),
                       vision=self.vision.shallow(), vision_deep=self.vision.deep())


def some_tower_prompted(cfg):
    """With both towers' prompts off there is nothing to learn (the optimizer would get no tensor)."""
    c = cfg.TRAINER.IVLP
    if not (c.N_CTX_TEXT and c.PROMPT_DEPTH_TEXT) and not (c.N_CTX_VISION and c.PROMPT_DEPTH_VISION):
        return "TRAINER.IVLP.PROMPT_DEPTH_TEXT", (
            "TRAINER.IVLP prompts neither tower (N_CTX_TEXT or PROMPT_DEPTH_TEXT is 0, and N_CTX_VISION or "
            "PROMPT_DEPTH_VISION is 0): nothing would be learned; give one tower prompts")
    return None


@TRAINER_REGISTRY.register()
class IVLP(PromptTrainer):
    CFG_NODE = "IVLP"

    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.IVLP = CN()
        cfg.TRAINER.IVLP.N_CTX_VISION = 2  # number of context vectors at the vision branch
        cfg.TRAINER.IVLP.N_CTX_TEXT = 2  # number of context vectors at the language branch
        cfg.TRAINER.IVLP.CTX_INIT = "a photo of a"  # initialization words (only for language prompts)
        cfg.TRAINER.IVLP.PREC = "fp16"  # fp16, fp32, amp
        cfg.TRAINER.IVLP.PROMPT_DEPTH_VISION = 9  # max 12, min 0; 0 = no visual prompts
        cfg.TRAINER.IVLP.PROMPT_DEPTH_TEXT = 9  # max 12, min 0; 0 = no text prompts
        # 0 is meaningful here: a tower without prompts (the repository's language-only config).
        declare(cfg.TRAINER.IVLP, N_CTX_VISION=at_least(0), N_CTX_TEXT=at_least(0),
                CTX_INIT=unchecked("words of the initial (or fixed) text prompt"), PREC=one_of(*PRECISIONS),
                PROMPT_DEPTH_VISION=at_least(0, "0: no visual prompts"),
                PROMPT_DEPTH_TEXT=at_least(0, "0: no text prompts"))
        declare_rule(cfg.TRAINER.IVLP, some_tower_prompted)

    def build_custom_clip(self, cfg, classnames, backbone):
        learner = IVLPPromptLearner(backbone, classnames, cfg.TRAINER.IVLP)
        fixed = None if learner.text_prompting else hand_written_prompt(cfg.TRAINER.IVLP.CTX_INIT)
        return DeepPromptCLIP(learner, backbone, classnames, fixed)
