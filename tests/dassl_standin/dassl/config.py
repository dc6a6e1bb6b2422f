"""Dassl's default tree: gatescope's keys and values, without their declarations, and Dassl's
bool MODEL.BACKBONE.PRETRAINED."""
from yacs.config import CfgNode as CN


def get_cfg_default():
    from trainers.engine.config import get_cfg_default as gatescope_default

    cfg = CN(gatescope_default())  # a plain copy: Dassl's tree declares nothing
    del cfg.DATASET["SUBSAMPLE_CLASSES"]  # CoOp's key, not Dassl's
    cfg.MODEL.BACKBONE.PRETRAINED = True
    return cfg
