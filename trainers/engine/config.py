"""Dassl's default config tree (`get_cfg_default`), same keys and defaults, for CoOp-family YAMLs.

Differences from Dassl, each because Dassl's value cannot express what gatescope needs:
- `MODEL.BACKBONE.PRETRAINED` is a string (an open_clip tag such as "openai", a local
  checkpoint path, or "" for random weights) instead of a bool.
- Each section declares what its values may be (`declare`, gates/config_spec.py), checked once
  when a run's config is assembled. Choices that live in modules costly to import at this point
  (optimizers, samplers, registries) are listed by the small functions below, called then.
"""
from yacs.config import CfgNode as CN

from gates.config_spec import (
    FLOAT32_MAX,
    MissingPathError,
    UnknownNameError,
    above,
    at_least,
    at_most,
    between,
    declare,
    declare_rule,
    each,
    existing_path,
    length,
    one_of,
    registered,
    satisfies,
    unchecked,
)


# Choices known only to modules that import torch (or open_clip, for a name that is not CoOp's
# or gatescope's): imported when a config is checked, not when this module is.
def _trainers():
    from . import TRAINER_REGISTRY
    return TRAINER_REGISTRY.registered_names()


def _registered_datasets():
    from ..data.registry import DATASET_REGISTRY
    return DATASET_REGISTRY.registered_names()


def _evaluators():
    from .evaluator import EVALUATOR_REGISTRY
    return EVALUATOR_REGISTRY.registered_names()


def _optimizers():
    from .optim import AVAI_OPTIMS
    return AVAI_OPTIMS


def _schedulers():
    from .optim import AVAI_SCHEDS
    return AVAI_SCHEDS


def _warmups():
    from .optim import AVAI_WARMUP_TYPES
    return AVAI_WARMUP_TYPES


def _samplers():
    from ..data.samplers import SAMPLERS
    return SAMPLERS


def _available_transforms():
    from ..data.transforms import AVAI_CHOICES, UNAVAILABLE
    return [name for name in AVAI_CHOICES if name not in UNAVAILABLE]


def _backbone_name_problem(name):
    from ..backbone.loader import backbone_name_problem
    return backbone_name_problem(name)


def _pretrained_problem(value):
    from ..backbone.loader import pretrained_problem
    return pretrained_problem(value)


def _ordered_pair(pair):
    return pair[0] <= pair[1]


def _odd(k):
    return k >= 1 and k % 2 == 1


def _staged_lr_is_finite(cfg):
    lr = cfg.OPTIM.LR * cfg.OPTIM.BASE_LR_MULT
    if cfg.OPTIM.STAGED_LR and lr > FLOAT32_MAX:
        return "OPTIM.BASE_LR_MULT", (f"OPTIM.LR x OPTIM.BASE_LR_MULT = {lr:g} overflows float32 (largest "
                                      f"{FLOAT32_MAX:.4g}), the dtype of the learnable tensors")
    return None


_C = CN()
_C.VERSION = 1
_C.OUTPUT_DIR = "./output"
_C.RESUME = ""
_C.SEED = -1
_C.USE_CUDA = True
_C.VERBOSE = True
declare(_C, VERSION=unchecked("Dassl's config version"), OUTPUT_DIR=unchecked("created when missing"),
        RESUME=existing_path("dir"), SEED=at_most(2**32 - 1, "numpy's largest seed; < 0: no fixed seed"))

###########################
# Input
###########################
_C.INPUT = CN()
_C.INPUT.SIZE = (224, 224)
_C.INPUT.NO_TRANSFORM = False
_C.INPUT.INTERPOLATION = "bilinear"
_C.INPUT.TRANSFORMS = ()
_C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
_C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
_C.INPUT.CROP_PADDING = 4
_C.INPUT.RRCROP_SCALE = (0.08, 1.0)
_C.INPUT.CUTOUT_N = 1
_C.INPUT.CUTOUT_LEN = 16
_C.INPUT.GN_MEAN = 0.0
_C.INPUT.GN_STD = 0.15
_C.INPUT.RANDAUGMENT_N = 2
_C.INPUT.RANDAUGMENT_M = 10
_C.INPUT.COLORJITTER_B = 0.4
_C.INPUT.COLORJITTER_C = 0.4
_C.INPUT.COLORJITTER_S = 0.4
_C.INPUT.COLORJITTER_H = 0.1
_C.INPUT.RGS_P = 0.2
_C.INPUT.GB_P = 0.5
_C.INPUT.GB_K = 21
declare(_C.INPUT, SIZE=(length(2), each(at_least(1))), INTERPOLATION=one_of("bilinear", "bicubic", "nearest"),
        TRANSFORMS=each(one_of(_available_transforms)),
        PIXEL_MEAN=(length(3), each(between(0, 1, "images are in [0, 1] when normalised"))),
        PIXEL_STD=(length(3), each(above(0, "images are divided by it"))), CROP_PADDING=at_least(0),
        RRCROP_SCALE=(length(2), each(between(0, 1, lo_open=True)),
                      satisfies(_ordered_pair, "(min, max) with min <= max")),
        CUTOUT_N=at_least(0), CUTOUT_LEN=at_least(1), GN_MEAN=unchecked("any shift"), GN_STD=at_least(0),
        RANDAUGMENT_N=at_least(0), RANDAUGMENT_M=between(0, 30, "torchvision's magnitude bins"),
        COLORJITTER_B=at_least(0), COLORJITTER_C=at_least(0), COLORJITTER_S=at_least(0),
        COLORJITTER_H=between(0, 0.5), RGS_P=between(0, 1), GB_P=between(0, 1),
        GB_K=satisfies(_odd, "an odd kernel size >= 1"))

###########################
# Dataset
###########################
_C.DATASET = CN()
_C.DATASET.ROOT = ""
_C.DATASET.NAME = ""
_C.DATASET.SOURCE_DOMAINS = ()
_C.DATASET.TARGET_DOMAINS = ()
_C.DATASET.NUM_LABELED = -1
_C.DATASET.NUM_SHOTS = -1
_C.DATASET.VAL_PERCENT = 0.1
_C.DATASET.STL10_FOLD = -1
_C.DATASET.CIFAR_C_TYPE = ""
_C.DATASET.CIFAR_C_LEVEL = 1
_C.DATASET.ALL_AS_UNLABELED = False
# CoOp's extend_cfg key, kept here because every CoOp-family trainer reads it.
_C.DATASET.SUBSAMPLE_CLASSES = "all"  # all, base or new
declare(_C.DATASET, ROOT=unchecked("each dataset checks its own folders when it loads"),
        NAME=registered("dataset", _registered_datasets),
        SOURCE_DOMAINS=unchecked("the dataset checks its domain names"),
        TARGET_DOMAINS=unchecked("the dataset checks its domain names"), NUM_LABELED=at_least(-1),
        NUM_SHOTS=at_least(-1, "-1: every image"), VAL_PERCENT=between(0, 1), STL10_FOLD=at_least(-1),
        CIFAR_C_TYPE=unchecked("Dassl's CIFAR-C corruption name"), CIFAR_C_LEVEL=between(1, 5),
        SUBSAMPLE_CLASSES=one_of("all", "base", "new"))

###########################
# Dataloader
###########################
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
_C.DATALOADER.K_TRANSFORMS = 1
_C.DATALOADER.RETURN_IMG0 = False
_C.DATALOADER.TRAIN_X = CN()
_C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
_C.DATALOADER.TRAIN_X.N_DOMAIN = 0
_C.DATALOADER.TRAIN_X.N_INS = 16
_C.DATALOADER.TRAIN_U = CN()
_C.DATALOADER.TRAIN_U.SAME_AS_X = True
_C.DATALOADER.TRAIN_U.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_U.BATCH_SIZE = 32
_C.DATALOADER.TRAIN_U.N_DOMAIN = 0
_C.DATALOADER.TRAIN_U.N_INS = 16
_C.DATALOADER.TEST = CN()
_C.DATALOADER.TEST.SAMPLER = "SequentialSampler"
_C.DATALOADER.TEST.BATCH_SIZE = 32
declare(_C.DATALOADER, NUM_WORKERS=at_least(0), K_TRANSFORMS=at_least(1))
for _loader in (_C.DATALOADER.TRAIN_X, _C.DATALOADER.TRAIN_U, _C.DATALOADER.TEST):
    declare(_loader, SAMPLER=one_of(_samplers), BATCH_SIZE=at_least(1))
for _loader in (_C.DATALOADER.TRAIN_X, _C.DATALOADER.TRAIN_U):
    declare(_loader, N_DOMAIN=at_least(0, "0: every domain"), N_INS=at_least(1))

###########################
# Model
###########################
_C.MODEL = CN()
_C.MODEL.INIT_WEIGHTS = ""
_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = ""
_C.MODEL.BACKBONE.PRETRAINED = "openai"
_C.MODEL.HEAD = CN()
_C.MODEL.HEAD.NAME = ""
_C.MODEL.HEAD.HIDDEN_LAYERS = ()
_C.MODEL.HEAD.ACTIVATION = "relu"
_C.MODEL.HEAD.BN = True
_C.MODEL.HEAD.DROPOUT = 0.0
declare(_C.MODEL, INIT_WEIGHTS=unchecked("Dassl's key; no gatescope trainer reads it"))
declare(_C.MODEL.BACKBONE, NAME=satisfies(_backbone_name_problem, "a known backbone", UnknownNameError),
        PRETRAINED=satisfies(_pretrained_problem, "a tag or an existing file", MissingPathError))
declare(_C.MODEL.HEAD, NAME=unchecked("Dassl's key; CLIP needs no head"),
        HIDDEN_LAYERS=each(at_least(1)), ACTIVATION=unchecked("Dassl's key; CLIP needs no head"),
        DROPOUT=between(0, 1, hi_open=True))

###########################
# Optimization
###########################
_C.OPTIM = CN()
_C.OPTIM.NAME = "adam"
_C.OPTIM.LR = 0.0003
_C.OPTIM.WEIGHT_DECAY = 5e-4
_C.OPTIM.MOMENTUM = 0.9
_C.OPTIM.SGD_DAMPNING = 0
_C.OPTIM.SGD_NESTEROV = False
# Largest L2 norm of all gradients together (torch's clip_grad_norm_, after the after_backward
# hooks, before the step); 0 = no clipping (engine/step.py clip_gradients).
_C.OPTIM.GRAD_CLIP = 0.0
_C.OPTIM.RMSPROP_ALPHA = 0.99
_C.OPTIM.ADAM_BETA1 = 0.9
_C.OPTIM.ADAM_BETA2 = 0.999
_C.OPTIM.STAGED_LR = False
_C.OPTIM.NEW_LAYERS = ()
_C.OPTIM.BASE_LR_MULT = 0.1
_C.OPTIM.LR_SCHEDULER = "single_step"
_C.OPTIM.STEPSIZE = (-1,)
_C.OPTIM.GAMMA = 0.1
_C.OPTIM.MAX_EPOCH = 10
_C.OPTIM.WARMUP_EPOCH = -1
_C.OPTIM.WARMUP_TYPE = "linear"
_C.OPTIM.WARMUP_CONS_LR = 1e-5
_C.OPTIM.WARMUP_MIN_LR = 1e-5
_C.OPTIM.WARMUP_RECOUNT = True
_LR = between(0, FLOAT32_MAX, "a finite float32: the learnable tensors' dtype")
declare(_C.OPTIM, NAME=one_of(_optimizers), LR=_LR, WEIGHT_DECAY=at_least(0), MOMENTUM=at_least(0),
        SGD_DAMPNING=at_least(0), RMSPROP_ALPHA=at_least(0), ADAM_BETA1=between(0, 1, hi_open=True),
        ADAM_BETA2=between(0, 1, hi_open=True), NEW_LAYERS=unchecked("names of model modules"),
        BASE_LR_MULT=_LR, LR_SCHEDULER=one_of(_schedulers),
        STEPSIZE=unchecked("epochs; <= 0: MAX_EPOCH (the schedule checks the rest)"), GAMMA=at_least(0),
        MAX_EPOCH=at_least(1), WARMUP_EPOCH=unchecked("<= 0: no warm-up"), WARMUP_TYPE=one_of(_warmups),
        WARMUP_CONS_LR=_LR, WARMUP_MIN_LR=_LR, GRAD_CLIP=at_least(0, "the largest gradient L2 norm; 0: no clipping"))
declare_rule(_C.OPTIM, _staged_lr_is_finite)

###########################
# Train
###########################
_C.TRAIN = CN()
_C.TRAIN.CHECKPOINT_FREQ = 0
_C.TRAIN.PRINT_FREQ = 10
_C.TRAIN.COUNT_ITER = "train_x"
declare(_C.TRAIN, CHECKPOINT_FREQ=at_least(0, "0: the last epoch only"), PRINT_FREQ=at_least(1),
        COUNT_ITER=one_of("train_x", "train_u", "smaller_one"))

###########################
# Test
###########################
_C.TEST = CN()
_C.TEST.EVALUATOR = "Classification"
_C.TEST.PER_CLASS_RESULT = False
_C.TEST.COMPUTE_CMAT = False
_C.TEST.NO_TEST = False
_C.TEST.SPLIT = "test"
_C.TEST.FINAL_MODEL = "last_step"
declare(_C.TEST, EVALUATOR=registered("evaluator", _evaluators), SPLIT=one_of("val", "test"),
        FINAL_MODEL=one_of("last_step", "best_val"))

###########################
# Trainer specifics (each trainer adds its own node; see trainers.extend_cfg)
###########################
_C.TRAINER = CN()
_C.TRAINER.NAME = ""
declare(_C.TRAINER, NAME=registered("trainer", _trainers))


def get_cfg_default():
    """A fresh, mutable copy of the default config (Dassl's `dassl.config.get_cfg_default`)."""
    return _C.clone()
