"""Zero-shot CLIP baselines of CoOp's code (which the study's code carries): no learning.

`ZeroshotCLIP`: one hand-written prompt per dataset (CoOp's per-dataset templates, e.g.
"a photo of a {}, a type of pet." for OxfordPets); `ZeroshotCLIP2`: the mean of the normalised
text features of CoOp's 7 selected ImageNet templates plus the dataset's template (not added for
ImageNet), renormalised (prompt ensembling). Logits = logit_scale.exp() * cos(image, text).
Run them with `--eval-only` (CoOp's scripts/zsclip/zeroshot.sh); the precision is
TRAINER.COOP.PREC, as CoOp's CLIP loader uses. A dataset without a template of its own (the
demo datasets, an imagefolder) gets "a photo of a {}.".
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import build_backbone
from .backbone.adapter import cosine_logits
from .engine import TRAINER_REGISTRY
from .prompt_trainer import PromptTrainer
from .prompting import check_prompts_fit

DEFAULT_TEMPLATE = "a photo of a {}."
# CoOp's trainers/zsclip.py CUSTOM_TEMPLATES.
DATASET_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}
# CoOp's IMAGENET_TEMPLATES_SELECT (from CLIP's prompt-engineering notebook).
ENSEMBLE_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def dataset_template(dataset_name):
    template = DATASET_TEMPLATES.get(dataset_name)
    if template is None:
        print(f'No prompt template of CoOp for dataset {dataset_name}; using "{DEFAULT_TEMPLATE}"')
        return DEFAULT_TEMPLATE
    return template


class ZeroshotCLIPModel(nn.Module):
    """The frozen backbone and fixed class text features (C, D): images (B, 3, H, W) -> logits (B, C)."""

    def __init__(self, backbone, text_features):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("text_features", text_features, persistent=False)

    def forward(self, image):
        return cosine_logits(self.backbone.encode_image(image), self.text_features, self.backbone.logit_scale)


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(PromptTrainer):
    CFG_NODE = "COOP"

    def templates(self):
        return [dataset_template(self.cfg.DATASET.NAME)]

    @torch.no_grad()
    def class_text_features(self, backbone, classnames):
        """(C, D): the normalised mean over templates of normalised features, as CoOp computes them."""
        templates = self.templates()
        print(f"Prompt templates ({len(templates)}): {templates}")
        total = 0
        for template in templates:
            check_prompts_fit(backbone, classnames, template)  # the tokenizer would cut it silently
            texts = [template.format(name.replace("_", " ")) for name in classnames]
            total = total + F.normalize(backbone.encode_text_tokens(backbone.tokenize(texts)), dim=-1)
        return F.normalize(total / len(templates), dim=-1)

    def build_model(self):
        self.prec = self.resolve_precision()
        print(f"Loading CLIP (backbone: {self.cfg.MODEL.BACKBONE.NAME})")
        backbone = build_backbone(self.cfg)
        if self.prec == "fp16":
            backbone.half()
        backbone.to(self.device)
        text_features = self.class_text_features(backbone, self.dm.dataset.classnames)
        self.model = ZeroshotCLIPModel(backbone, text_features)
        self.model.eval()
        self.optim = self.sched = self.scaler = None

    def model_inference(self, image):
        return self.model(image)

    def train(self, *args, **kwargs):
        raise RuntimeError(f"{self.cfg.TRAINER.NAME} has nothing to train; run it with --eval-only "
                           "(as CoOp's scripts/zsclip/zeroshot.sh does)")


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(ZeroshotCLIP):
    """Prompt ensembling over CoOp's selected ImageNet templates plus the dataset's own."""

    def templates(self):
        extra = [] if self.cfg.DATASET.NAME == "ImageNet" else [dataset_template(self.cfg.DATASET.NAME)]
        return [*ENSEMBLE_TEMPLATES, *extra]
