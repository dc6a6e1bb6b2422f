"""gatescope's trainers: the CoOp family on a frozen open_clip CLIP, on a Dassl-compatible engine.

Importing this package registers the built-in trainers in TRAINER_REGISTRY.
"""
from . import bidir_maple, cocoop, coop, ivlp, maple, vpt  # noqa: F401  (register the trainers)
from .config import extend_cfg, setup_cfg

__all__ = ["extend_cfg", "setup_cfg"]
