"""The engine: gatescope's own Dassl-compatible one by default, an installed Dassl on request.

`GATESCOPE_ENGINE=dassl` makes every gatescope trainer subclass Dassl's `TrainerX` and register
into Dassl's registries (Dassl then builds data, runs the loop and saves checkpoints), while
optimizers and schedulers stay gatescope's: the latest Dassl's warm-up scheduler passes
`verbose` to `LRScheduler.__init__`, which current PyTorch rejects. The end of a run is the
built-in engine's on both (dassl_adapter.py: on_abort and after_train from try/finally,
after_test with the whole results dict, the plugins' state saved with the checkpoints).
"""
import os

from .optim import build_lr_scheduler, build_optimizer

ENGINE = os.environ.get("GATESCOPE_ENGINE", "gatescope").strip().lower() or "gatescope"
ENGINES = ("gatescope", "dassl")

if ENGINE == "dassl":
    try:
        from dassl.config import get_cfg_default as dassl_cfg_default
        from dassl.engine import TRAINER_REGISTRY, SimpleTrainer, TrainerBase, build_trainer
        from dassl.engine import TrainerX as DasslTrainerX
    except ImportError as e:
        raise ImportError(
            f"GATESCOPE_ENGINE=dassl asks for an installed Dassl, but it cannot be imported ({e}). "
            "Install Dassl (https://github.com/KaiyangZhou/Dassl.pytorch, `pip install -e .` in its "
            "folder) or unset GATESCOPE_ENGINE to use gatescope's built-in engine."
        ) from e
    from .config import get_cfg_default as gatescope_cfg_default
    from .dassl_adapter import adapt_dassl_cfg, on_dassl

    TrainerX = on_dassl(DasslTrainerX)

    def get_cfg_default():
        """Dassl's default config, with gatescope's MODEL.BACKBONE.PRETRAINED (a string)."""
        return adapt_dassl_cfg(dassl_cfg_default(), gatescope_cfg_default())
elif ENGINE == "gatescope":
    from .config import get_cfg_default
    from .trainer import TRAINER_REGISTRY, SimpleTrainer, TrainerBase, TrainerX, build_trainer
else:
    raise ValueError(f"GATESCOPE_ENGINE={ENGINE!r} is not an engine; use one of {ENGINES}")

__all__ = ["ENGINE", "TRAINER_REGISTRY", "TrainerBase", "SimpleTrainer", "TrainerX", "build_trainer",
           "get_cfg_default", "build_optimizer", "build_lr_scheduler"]
