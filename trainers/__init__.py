"""gatescope's trainers: the CoOp family on a frozen open_clip CLIP, on a Dassl-compatible engine.

Importing this package registers the built-in trainers in TRAINER_REGISTRY.
"""
from . import (adaptive_controls, adaptive_maple, bidir_maple, cocoop, cocoop_gated, coop,  # noqa: F401
               coop_gated, ivlp, maple, maple_gated, param_matched, vpt, zsclip)
from .config import extend_cfg, setup_cfg

__all__ = ["extend_cfg", "setup_cfg"]
