"""The frozen CLIP backbone: loading from open_clip (`loader`) and the prompt-learning adapter."""
from .adapter import ClipBackbone, DeepPrompts, cosine_logits
from .loader import load_clip


def pretrained_from_cfg(value):
    """MODEL.BACKBONE.PRETRAINED as a string (Dassl's default for this key is the bool True)."""
    if value is True:
        return "openai"
    if value is False or value is None:
        return ""
    return str(value)


def build_backbone(cfg):
    """The frozen `ClipBackbone` named by MODEL.BACKBONE.NAME with weights MODEL.BACKBONE.PRETRAINED
    (CoOp's `load_clip_to_cpu`, through open_clip)."""
    model = load_clip(cfg.MODEL.BACKBONE.NAME, pretrained_from_cfg(cfg.MODEL.BACKBONE.PRETRAINED))
    return ClipBackbone(model)


__all__ = ["ClipBackbone", "DeepPrompts", "cosine_logits", "load_clip", "build_backbone"]
