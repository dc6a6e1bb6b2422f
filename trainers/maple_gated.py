"""MaPLeGated: MaPLe plus a per-input gate over its deep-prompt layers (insertion depth).

Target `depth` (mask, K = PROMPT_DEPTH - 1): before layer l of both towers the prompt tokens
become g_l * (new deep prompt) + (1 - g_l) * (tokens carried from layer l - 1), so g = 1
everywhere is MaPLe and g = 0 stops insertion from layer l on. The condition is computed before
the prompted towers run (GATE.COND): `patch_mean`, the mean patch embedding of the frozen
vision stem (cheap, the default), or `image_feature`, the frozen unprompted image feature (one
more image-encoder pass).
"""
import torch.nn.functional as F

from .deep_prompting import DeepPromptCLIP
from .engine import TRAINER_REGISTRY
from .gating import GatedTrainer
from .maple import MaPLe, MaPLePromptLearner


class MaPLeGatedPromptLearner(MaPLePromptLearner):
    def __init__(self, backbone, classnames, c, build_gate, cond):
        super().__init__(backbone, classnames, c.N_CTX, c.CTX_INIT, c.PROMPT_DEPTH)
        if c.PROMPT_DEPTH < 2:
            raise ValueError("MaPLeGated gates the deep-prompt layers; TRAINER.MAPLE.PROMPT_DEPTH must be >= 2")
        cond_dim = backbone.vis_dim if cond == "patch_mean" else backbone.embed_dim
        self.gate = build_gate(c.PROMPT_DEPTH - 1, cond_dim)


class MaPLeGatedCLIP(DeepPromptCLIP):
    def __init__(self, prompt_learner, backbone, cond):
        super().__init__(prompt_learner, backbone)
        self.cond = cond

    def condition(self, image):
        if self.cond == "image_feature":
            return F.normalize(self.backbone.encode_image(image), dim=-1)
        return self.backbone.patch_mean(image)

    def forward(self, image):
        gates = self.prompt_learner.gate(self.condition(image))
        if not self.prompt_learner.gate.input_dependent:
            gates = gates[:1]  # one row serves every image and every class prompt
        prompts = self.prompt_learner()
        prompts.text_gates = prompts.vision_gates = gates
        return super().forward_prompts(image, prompts)


@TRAINER_REGISTRY.register()
class MaPLeGated(GatedTrainer, MaPLe):
    PARENT_TRAINER = "MaPLe"
    TARGETS = {"depth": "mask"}
    CONDS = ("patch_mean", "image_feature")
    DEFAULT_TARGET = "depth"
    DEFAULT_COND = "patch_mean"

    @classmethod
    def config_problems(cls, cfg):
        yield from super().config_problems(cfg)
        if cfg.TRAINER.MAPLE.PROMPT_DEPTH < 2:
            yield ("TRAINER.MAPLE.PROMPT_DEPTH", "MaPLeGated gates the deep-prompt layers: TRAINER.MAPLE.PROMPT_DEPTH "
                   f"must be >= 2, got {cfg.TRAINER.MAPLE.PROMPT_DEPTH}")

    def build_custom_clip(self, cfg, classnames, backbone):
        _ = self.gate_target
        learner = MaPLeGatedPromptLearner(backbone, classnames, cfg.TRAINER.MAPLE, self.build_gate, self.gate_cond)
        return MaPLeGatedCLIP(learner, backbone, self.gate_cond)
