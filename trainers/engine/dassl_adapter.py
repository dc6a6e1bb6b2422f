"""The built-in engine's end of a run, on an installed Dassl (`GATESCOPE_ENGINE=dassl`).

Dassl's `TrainerBase.train` is a bare loop, its `test()` returns only the first metric and its
checkpoints hold the weights, optimizer and scheduler only. `DasslLifecycle`, placed in front of
Dassl's `TrainerX` (`on_dassl`, used by engine/__init__.py), runs Dassl's loop, evaluation and
checkpoint files with the built-in engine's functions around them (engine/trainer.py), so the
trainers' lifecycle methods are called at the same points on both engines::

    train()           with ending_in_finally(self): Dassl's loop        # on_abort, finish_train
    test(split)       evaluate_split -> after_test(split, results)      # returns the first metric
    after_epoch()     Dassl's (validation, then its saves, held)
    checkpoint_epoch  the held saves, after the epoch's hooks           # in the next before_epoch
                                                                        # or in after_train
    save_model        training state (RNG, best result, skips, plugins' state) beside the checkpoint,
                      then Dassl's save_model
    resume_model_if_exist   Dassl's, then that training state (load_training_state)
    finish_train      closes the TensorBoard writer, last (Dassl closes it in its after_train)

Dassl's `after_epoch` saves before the plugins' `after_epoch` hooks have run, and a checkpoint
must hold what the epoch wrote (the built-in engine saves in `checkpoint_epoch`, the epoch's last
act), so its saves are held and written at the next point Dassl's loop calls. The training state
goes to `<model folder>/<checkpoint file>.training-state` in the first model's folder, written
(atomically) before Dassl writes the checkpoint and its `checkpoint` pointer: a run killed in
between resumes from the previous checkpoint, whose state file is intact.

What stays Dassl's: its checkpoint files (pickled, non-atomic writes, no record of what they were
made for), its resume (no check that the folder holds the same run), the output folder (no
config.yaml, no TRAIN.OVERWRITE), `--eval-only` loading (model-best.pth.tar or --load-epoch).
"""
import io
import os.path as osp

import torch

from .checkpoint import load_checkpoint
from .trainer import TrainerBase, ending_in_finally, evaluate_split, stop_if_signalled
from .trainer import TrainerX as BuiltinTrainerX
from .utils import atomic_write_bytes

TRAINING_STATE_SUFFIX = ".training-state"

__all__ = ["DasslLifecycle", "on_dassl", "adapt_dassl_cfg", "training_state_path", "TRAINING_STATE_SUFFIX"]


def training_state_path(directory, model_name, checkpoint_file):
    """Where the training state of checkpoint `<directory>/<model_name>/<checkpoint_file>` lies."""
    return osp.join(directory, model_name, checkpoint_file + TRAINING_STATE_SUFFIX)


def adapt_dassl_cfg(cfg, gatescope_cfg):
    """Dassl's default config `cfg` with gatescope's value of the one key whose type differs:
    MODEL.BACKBONE.PRETRAINED (Dassl: a bool for its own ImageNet weights; gatescope: an open_clip
    tag or a checkpoint path, which a YAML would otherwise fail to merge over a bool)."""
    cfg.MODEL.BACKBONE.PRETRAINED = gatescope_cfg.MODEL.BACKBONE.PRETRAINED
    return cfg


class DasslLifecycle:
    """Mixed in front of Dassl's `TrainerX` (see the module docstring); subclasses define the
    lifecycle methods (PromptTrainer: the plugins' hooks) exactly as on the built-in engine."""

    run_error = None  # set by ending_in_finally
    nonfinite_skips = 0  # steps skipped under TRAIN.NONFINITE skip (engine/step.py counts them)

    # The built-in engine's own functions (they call no super(), so they run on Dassl's classes).
    training_state = TrainerBase.training_state
    load_training_state = TrainerBase.load_training_state
    where_stopped = TrainerBase.where_stopped
    step_label = TrainerBase.step_label
    # (images, labels), CoOp's; Dassl's TrainerX returns the domains too, which no trainer here takes.
    parse_batch_train = BuiltinTrainerX.parse_batch_train

    def train(self, *args, **kwargs):
        with ending_in_finally(self):
            super().train(*args, **kwargs)

    def test(self, split=None):
        """Evaluate and call after_test with the whole results dict; return the first metric, as
        Dassl's test() does (its after_epoch compares it with the best validation result)."""
        split, results = evaluate_split(self, split)
        self.after_test(split, results)
        return next(iter(results.values()))

    # ------------------------------------------------------------ points Dassl does not have
    def after_test(self, split, results):
        pass

    def after_step(self):
        stop_if_signalled()  # Dassl's loop has no safe point of its own: one per training step

    def on_abort(self, error):
        pass

    def close_writer(self):
        pass  # Dassl's after_train calls it before the plugins' after_train: finish_train closes it

    def finish_train(self):
        super().close_writer()
        self._writer = None

    # ------------------------------------------------------------ checkpoints
    def after_epoch(self):
        self._held_saves = []  # save_model calls from Dassl's after_epoch, written by checkpoint_epoch
        super().after_epoch()

    def checkpoint_epoch(self):
        """Write the saves Dassl's after_epoch asked for, now that the epoch's hooks have run (no
        checkpoint for an epoch stopped by a signal before this point)."""
        held = self.__dict__.pop("_held_saves", None)
        if not held:
            return
        stop_if_signalled()
        epoch = self.epoch
        self.epoch = held[0][0]  # Dassl's loop may have moved on; the saves are of the held epoch
        try:
            for args in held:
                self.save_model(*args)
        finally:
            self.epoch = epoch

    def before_epoch(self):
        self.checkpoint_epoch()
        super().before_epoch()

    def after_train(self):
        self.checkpoint_epoch()
        super().after_train()

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        held = self.__dict__.get("_held_saves")
        if held is not None:
            held.append((epoch, directory, is_best, val_result, model_name))
            return
        names = self.get_model_names()
        if names:
            buffer = io.BytesIO()
            torch.save(self.training_state(), buffer)
            atomic_write_bytes(training_state_path(directory, names[0], model_name or f"model.pth.tar-{epoch + 1}"),
                               buffer.getvalue())
        super().save_model(epoch, directory, is_best=is_best, val_result=val_result, model_name=model_name)

    def resume_model_if_exist(self, directory):
        start_epoch = super().resume_model_if_exist(directory)
        names = self.get_model_names()
        pointer = osp.join(directory, names[0], "checkpoint") if names else ""
        if not start_epoch or not osp.isfile(pointer):
            return start_epoch
        with open(pointer, encoding="utf-8") as f:
            checkpoint_file = f.readline().strip()
        path = training_state_path(directory, names[0], checkpoint_file)
        if osp.isfile(path):
            print(f'Loading the training state (RNG, best result, plugins\' state) from "{path}"')
            self.load_training_state(load_checkpoint(path))
        else:
            print(f'No training state beside "{checkpoint_file}" (written by Dassl itself?): the RNG, the best '
                  "validation result and the plugins' state start afresh")
        return start_epoch


def on_dassl(dassl_trainer_x):
    """Dassl's `TrainerX` class with the built-in engine's lifecycle end (`DasslLifecycle`)."""
    return type("TrainerX", (DasslLifecycle, dassl_trainer_x),
                {"__module__": __name__, "__doc__": f"{dassl_trainer_x.__module__}.TrainerX with DasslLifecycle."})
