"""VPT-deep on CLIP (the MaPLe repository's vision-only baseline).

Learnable visual prompt tokens, shallow and for vision layers 1..PROMPT_DEPTH_VISION-1; the
text side is CLIP's zero-shot classifier on the fixed prompt "<CTX_INIT> <classname>.".
Keys `TRAINER.VPT.{N_CTX_VISION, CTX_INIT, PREC, PROMPT_DEPTH_VISION}`.
"""
import torch.nn as nn
from yacs.config import CfgNode as CN

from gates.config_spec import at_least, declare, one_of, unchecked

from .deep_prompting import DeepPromptCLIP, Prompts
from .engine import TRAINER_REGISTRY
from .ivlp import VisualPromptStack, hand_written_prompt
from .prompt_trainer import PRECISIONS, PromptTrainer


class VPTPromptLearner(nn.Module):
    """VPT's `PromptLearner`: deep prompts in the vision tower only (the text prompt is fixed)."""

    def __init__(self, backbone, cfg):
        super().__init__()
        if cfg.PROMPT_DEPTH_VISION < 1 or cfg.N_CTX_VISION < 1:
            raise ValueError("VPT needs TRAINER.VPT.PROMPT_DEPTH_VISION >= 1 and N_CTX_VISION >= 1")
        self.vision = VisualPromptStack(backbone, cfg.N_CTX_VISION, cfg.PROMPT_DEPTH_VISION,
                                        "TRAINER.VPT.PROMPT_DEPTH_VISION")

    def forward(self):
        return Prompts(vision=self.vision.shallow(), vision_deep=self.vision.deep())


@TRAINER_REGISTRY.register()
class VPT(PromptTrainer):
    CFG_NODE = "VPT"

    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.VPT = CN()
        cfg.TRAINER.VPT.N_CTX_VISION = 2  # number of context vectors at the vision branch
        cfg.TRAINER.VPT.CTX_INIT = "a photo of a"  # words of the fixed text prompt
        cfg.TRAINER.VPT.PREC = "fp16"  # fp16, fp32, amp
        cfg.TRAINER.VPT.PROMPT_DEPTH_VISION = 1  # max 12, min 1; 1 = shallow visual prompts only
        declare(cfg.TRAINER.VPT, N_CTX_VISION=at_least(1), CTX_INIT=unchecked("words of the fixed text prompt"),
                PREC=one_of(*PRECISIONS), PROMPT_DEPTH_VISION=at_least(1, "1: shallow visual prompts only"))

    def build_custom_clip(self, cfg, classnames, backbone):
        return DeepPromptCLIP(VPTPromptLearner(backbone, cfg.TRAINER.VPT), backbone, classnames,
                              hand_written_prompt(cfg.TRAINER.VPT.CTX_INIT))
