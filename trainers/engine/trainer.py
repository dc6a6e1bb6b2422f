"""Dassl's trainer classes: `TrainerBase` -> `SimpleTrainer` -> `TrainerX`, same names and order.

The lifecycle, as Dassl runs it (and as every gatescope trainer runs it)::

    trainer.train():
        try:
            before_train()                  # resume from OUTPUT_DIR / RESUME, open TensorBoard
            for epoch in range(start_epoch, max_epoch):
                before_epoch()
                run_epoch()                 # per batch: forward_backward(batch) -> optimizer_step
                after_epoch()               # val test (best_val)
                checkpoint_epoch()          # the epoch's checkpoints, its last act
            after_train()                   # "Finish training", final test()
        except BaseException as error:      # anything, KeyboardInterrupt and SIGTERM included
            on_abort(error)
            raise
        finally:
            finish_train()                  # always; closes the TensorBoard writer last

Differences from Dassl, each fixing something its users hit:
- the scheduler is bound to the live optimizer after a resume (Dassl's keeps driving a stale
  copy, so the learning rate stops changing), and RNG states and the best validation result are
  checkpointed, so a resumed run continues exactly where the interrupted one stopped;
- checkpoints are written atomically and loaded with `weights_only=True`, and record what they
  were made for (trainer, backbone, class names, the prompt's size keys, class-specific tensors,
  the last epoch): a checkpoint of another run is refused on resume, class-specific weights are
  refused on other classes, and a checkpoint past OPTIM.MAX_EPOCH is an error, not a finished run;
- one process per run folder: training holds the folder's lock (`run_folder.hold_run_folder`),
  and a second process is refused at once, naming the holder;
- `--eval-only` without `--load-epoch` loads model-best.pth.tar, or the last checkpoint when the
  run never validated (Dassl demands model-best); a missing checkpoint lists those present;
- an epoch's checkpoints are written after its `after_epoch` (and every plugin's after_epoch
  hook) returns, as the epoch's last act: whatever an epoch writes (diagnostics history, results)
  is on disk before the checkpoint that says the epoch is done, so a run killed at any point
  resumes from a checkpoint whose epoch is complete everywhere;
- the run's config is kept in `<OUTPUT_DIR>/config.yaml` and a folder holding a run with another
  config is refused (TRAIN.OVERWRITE True replaces it);
- one optimizer step for every path (`step.optimizer_step`): TRAIN.NONFINITE stop/skip for a
  NaN or Inf loss or gradient, and a NonFiniteError (a FloatingPointError) naming the step and
  the group for a learning rate or parameters gone non-finite;
- the loop ends in try/finally (Detectron2's `TrainerBase.train`; `ending_in_finally`, which
  runs around Dassl's loop too with GATESCOPE_ENGINE=dassl): any exception, SIGTERM and Ctrl-C
  included (turned into `SignalInterrupt` while training), reaches `on_abort` and
  `finish_train`, so plugins write their files and writers are closed, and the last checkpoint
  stays resumable; the exception carries `where_stopped` (the epoch and batch, the last complete
  checkpoint) for the one line the command line prints;
- `test()` returns the evaluator's whole results dict (Dassl returns its first value) and calls
  the `after_test(split, results)` point.
"""
import contextlib
import datetime
import os
import os.path as osp
import signal
import threading
import time
import warnings
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .checkpoint import (
    BEST_NAME,
    CheckpointError,
    capture_rng_state,
    check_checkpoint_meta,
    check_class_transfer,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    resume_from_checkpoint,
    save_checkpoint,
)
from .evaluator import build_evaluator
from .registry import Registry
from .run_folder import hold_run_folder
from .step import NONFINITE_POLICIES, NonFiniteError, optimizer_step, step_label
from .utils import (
    AverageMeter,
    MetricMeter,
    claim_output_dir,
    kill_point,
    mkdir_if_missing,
    remove_stale_temp_files,
    set_deterministic,
)

TRAINER_REGISTRY = Registry("TRAINER")
__all__ = ["TRAINER_REGISTRY", "NONFINITE_POLICIES", "NonFiniteError", "SignalInterrupt", "build_trainer",
           "TrainerBase", "SimpleTrainer", "TrainerX"]


class SignalInterrupt(KeyboardInterrupt):
    """SIGTERM or SIGINT (Ctrl-C) received while training, raised at the loop's next safe point
    (see `signals_raise`), so the loop stops the same way for both (on_abort, finish_train,
    nothing half-written)."""

    def __init__(self, signum):
        self.signum = signum
        super().__init__(f"{signal.Signals(signum).name} received; the run stopped and can be resumed with the "
                         "same command")


_stop_signals = []  # stop signals received while the loop runs, not acted on yet


@contextlib.contextmanager
def signals_raise(signums=(signal.SIGTERM, signal.SIGINT)):
    """While the block runs, each of `signums` asks the loop to stop: `stop_if_signalled()`, called
    after every training step and evaluation batch, then raises SignalInterrupt.

    The handler only records the signal. Raising from the handler itself would interrupt
    whatever runs at that instant, possibly between taking a lock and the `try` that releases it
    (the TensorBoard writer's, a file's), and the abort path would then wait on that lock for
    ever. The handler restores the previous one as it fires, so a second signal acts as it would
    have (SIGTERM kills, a second Ctrl-C raises at once). Outside the main thread, where Python
    cannot install handlers, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame):
        signal.signal(signum, previous[signum])
        _stop_signals.append(signum)
    for signum in signums:
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        _stop_signals.clear()


def stop_if_signalled():
    """Raise SignalInterrupt if a stop signal arrived (a safe point of the loop)."""
    if _stop_signals:
        raise SignalInterrupt(_stop_signals[0])


@contextlib.contextmanager
def ending_in_finally(trainer):
    """The end of a training run, on either engine (the try/except/finally of the module
    docstring; Dassl's engine runs its own loop inside it, see dassl_adapter.py).

    While the block runs, SIGTERM and SIGINT stop it at the loop's next safe point
    (`stop_if_signalled`). Any exception is recorded as `trainer.run_error` and given
    `where_stopped` (the trainer's own words) before `trainer.on_abort(error)` runs and it
    propagates; `trainer.finish_train()` runs always, last. `run_error` is None while the run goes
    on and after it completes.
    """
    trainer.run_error = None
    with signals_raise():
        try:
            yield
        except BaseException as error:
            trainer.run_error = error
            try:
                error.where_stopped = trainer.where_stopped()
            except Exception:  # the report is best effort; the error itself must propagate
                pass
            trainer.on_abort(error)
            raise
        finally:
            trainer.finish_train()


def evaluate_split(trainer, split=None):
    """Dassl's evaluation of `trainer` on `split`, on either engine: `(split evaluated, the
    evaluator's results dict)`, e.g. ("val", {"accuracy": 71.2, "error_rate": 28.8, "macro_f1": 70.9}).

    `split` defaults to TEST.SPLIT; "val" without a val loader evaluates "test" (as Dassl does).
    The batches run through `parse_batch_test` and `model_inference` without autograd, each one a
    safe point for a stop signal; the results are written as `<split>/<metric>` TensorBoard
    scalars at the current epoch. The caller calls `after_test` (outside no_grad: a plugin may
    measure gradients there, as the diagnostics' task-loss rho does).
    """
    trainer.set_model_mode("eval")
    trainer.evaluator.reset()
    if split is None:
        split = trainer.cfg.TEST.SPLIT
    if split == "val" and trainer.val_loader is not None:
        data_loader = trainer.val_loader
    else:
        split = "test"
        data_loader = trainer.test_loader
    print(f"Evaluate on the *{split}* set")
    with torch.no_grad():
        for batch in tqdm(data_loader, disable=not trainer.cfg.VERBOSE):
            input, label = trainer.parse_batch_test(batch)
            output = trainer.model_inference(input)
            trainer.evaluator.process(output, label)
            kill_point("evaluation")
            stop_if_signalled()
        results = trainer.evaluator.evaluate()
    for k, v in results.items():
        trainer.write_scalar(f"{split}/{k}", v, trainer.epoch)
    return split, results


def build_trainer(cfg):
    """Instantiate the trainer named by `cfg.TRAINER.NAME` (errors list the available ones)."""
    avai_trainers = TRAINER_REGISTRY.registered_names()
    if cfg.TRAINER.NAME not in avai_trainers:
        raise KeyError(
            f'Unknown trainer "{cfg.TRAINER.NAME}" (from --trainer or TRAINER.NAME). '
            f"Available trainers: {', '.join(sorted(avai_trainers))}"
        )
    if cfg.VERBOSE:
        print(f"Loading trainer: {cfg.TRAINER.NAME}")
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)


class TrainerBase:
    """Model bookkeeping (register, save, load, modes) and the epoch loop skeleton."""

    def __init__(self):
        self._models = OrderedDict()
        self._optims = OrderedDict()
        self._scheds = OrderedDict()
        self._writer = None

    # ------------------------------------------------------------ models
    def register_model(self, name="model", model=None, optim=None, sched=None):
        if self.__dict__.get("_models") is None:
            raise AttributeError("Cannot assign model before super().__init__() call")
        if name in self._models:
            raise KeyError(f'A model named "{name}" is already registered')
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names=None):
        names_real = list(self._models.keys())
        if names is None:
            return names_real
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            if name not in names_real:
                raise KeyError(f'No registered model "{name}"; registered: {names_real}')
        return names

    def model_state_dict(self, name):
        """What a checkpoint stores for model `name` (subclasses save learnable parts only)."""
        return self._models[name].state_dict()

    def load_model_state_dict(self, name, state_dict):
        self._models[name].load_state_dict(state_dict)

    def training_state(self):
        """Extra state saved with every checkpoint so that a resume continues exactly."""
        return {"rng_state": capture_rng_state(), "best_result": float(getattr(self, "best_result", -np.inf)),
                "nonfinite_skips": int(getattr(self, "nonfinite_skips", 0))}

    def load_training_state(self, state):
        if "rng_state" in state:
            restore_rng_state(state["rng_state"])
        if "best_result" in state:
            self.best_result = state["best_result"]
        if "nonfinite_skips" in state:
            self.nonfinite_skips = int(state["nonfinite_skips"])

    def checkpoint_meta(self):
        """What a checkpoint was made for (saved as its "meta"); on resume every key but max_epoch
        must match this run, on load for evaluation the trainer, backbone and prompt keys (see
        `RESUME_META_KEYS`, `LOAD_META_KEYS`)."""
        cfg = getattr(self, "cfg", None)
        if cfg is None:
            return {}
        meta = {"trainer": cfg.TRAINER.NAME, "backbone": cfg.MODEL.BACKBONE.NAME,
                "num_classes": int(getattr(self, "num_classes", 0))}
        classnames = self.checkpoint_classnames()
        if classnames is not None:
            meta["classnames"] = classnames
        meta["class_specific"] = list(self.class_specific_keys())
        meta["prompt"] = dict(self.prompt_identity())
        meta["max_epoch"] = int(cfg.OPTIM.MAX_EPOCH)
        return meta

    # What must match to resume (a resume continues the same run) and to load weights for
    # evaluation (other classes allowed: base-to-new and cross-dataset evaluation).
    RESUME_META_KEYS = ("trainer", "backbone", "num_classes", "classnames", "class_specific", "prompt")
    LOAD_META_KEYS = ("trainer", "backbone", "prompt")

    def checkpoint_classnames(self):
        """The class names in label order, recorded with every checkpoint (None when unknown)."""
        lab2cname = getattr(self, "lab2cname", None)
        if not lab2cname:
            return None
        return [str(lab2cname[label]) for label in sorted(lab2cname)]

    def class_specific_keys(self):
        """State-dict keys whose rows belong to one class each (CoOp's CSC context); none by default."""
        return []

    def prompt_identity(self):
        """{config key: value} of what fixes the learnable tensors' meaning (prompt length, depth,
        class-specific context); subclasses fill it."""
        return {}

    def _expected_meta(self, keys):
        meta = self.checkpoint_meta()
        return {key: meta[key] for key in keys if key in meta}

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        extra = self.training_state()
        extra["meta"] = self.checkpoint_meta()
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            save_checkpoint(
                {
                    "state_dict": self.model_state_dict(name),
                    "epoch": epoch + 1,
                    "optimizer": optim.state_dict() if optim is not None else None,
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "val_result": val_result,
                    **extra,
                },
                osp.join(directory, name),
                is_best=is_best,
                model_name=model_name,
            )

    def resume_model_if_exist(self, directory):
        names = self.get_model_names()
        if not all(osp.exists(osp.join(directory, name)) for name in names):
            print("No checkpoint found, train from scratch")
            return 0
        for name in names:  # what a save killed half-way left behind
            for path in remove_stale_temp_files(osp.join(directory, name)):
                print(f'Removed "{path}", left by a checkpoint save that was interrupted')
        found = {name: resume_from_checkpoint(osp.join(directory, name)) for name in names}
        if any(v is None for v in found.values()):
            print("No checkpoint found, train from scratch")
            return 0
        print(f"Found checkpoint at {directory} (will resume training)")
        expected = self._expected_meta(self.RESUME_META_KEYS)
        for name, (path, state) in found.items():
            check_checkpoint_meta(state, expected, path)
            self.check_resume_epoch(path, state)
        start_epoch = 0
        for name, (path, state) in found.items():
            print(f'Loading checkpoint from "{path}"')
            self.load_model_state_dict(name, state["state_dict"])
            if self._optims[name] is not None and state.get("optimizer") is not None:
                self._optims[name].load_state_dict(state["optimizer"])
            if self._scheds[name] is not None and state.get("scheduler") is not None:
                self._scheds[name].load_state_dict(state["scheduler"])
            start_epoch = state["epoch"]
            print(f"Previous epoch: {start_epoch}")
        # RNG last: nothing after this point may draw random numbers before training resumes.
        self.load_training_state(state)
        return start_epoch

    def check_resume_epoch(self, path, state):
        """A checkpoint past this run's last epoch is an error naming both (never "epoch 3 of 2")."""
        epoch = state.get("epoch")
        max_epoch = getattr(self, "max_epoch", None)
        if isinstance(epoch, int) and isinstance(max_epoch, int) and epoch > max_epoch:
            raise CheckpointError(
                f'Checkpoint "{path}" is of epoch {epoch}, past this run\'s last epoch: OPTIM.MAX_EPOCH is '
                f"{max_epoch}. The run in this folder has already trained {epoch} epochs. Resume it with "
                f"OPTIM.MAX_EPOCH {epoch} or more (it is then complete, or extended), or train {max_epoch} epoch(s) "
                "from scratch with another --output-dir.")

    def checkpoint_sources(self, name):
        """Where model `name`'s weights may lie below a --model-dir: [(folder, adapt)] in order.
        `adapt(state_dict) -> state_dict` maps another code's saved layout onto this model's
        (None: gatescope's own layout). Subclasses add the original code's folders."""
        return [(name, None)]

    def load_model(self, directory, epoch=None):
        """Load weights for evaluation from `directory/<name>/`: `model.pth.tar-<epoch>`, or without
        `epoch` `model-best.pth.tar`, else (a run that never validated) the last checkpoint.

        Raises FileNotFoundError listing the checkpoints present and the flag that selects one,
        CheckpointMismatchError for weights of another trainer, backbone or prompt size, or
        class-specific weights of other classes.
        """
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        for name in self.get_model_names():
            model_path, adapt = self._model_file(directory, name, epoch)
            checkpoint = load_checkpoint(model_path)
            check_checkpoint_meta(checkpoint, self._expected_meta(self.LOAD_META_KEYS), model_path)
            classnames = self.checkpoint_classnames()
            if classnames is not None:
                check_class_transfer(checkpoint, classnames, model_path)
            state_dict = checkpoint["state_dict"]
            if adapt is not None:
                state_dict = adapt(state_dict)
            meta = checkpoint.get("meta")
            own = self._models[name].state_dict()
            unchecked = [k for k in self.class_specific_keys()
                         if k in state_dict and k in own and state_dict[k].shape == own[k].shape]
            if unchecked and not (isinstance(meta, dict) and "classnames" in meta):
                # CoOp's own checkpoints: the sizes are checked below, the classes cannot be.
                warnings.warn(f'"{model_path}" does not record the classes its class-specific context '
                              f"({', '.join(unchecked)}) was trained on; it is applied to this run's classes by "
                              "label, so make sure they are the same classes in the same order", stacklevel=2)
            print(f'Loading weights to {name} from "{model_path}" (epoch = {checkpoint.get("epoch")})')
            self.load_model_state_dict(name, state_dict)

    def _model_file(self, directory, name, epoch):
        """(path of the checkpoint to load for model `name`, its layout adapter)."""
        sources = self.checkpoint_sources(name)
        folder, adapt = next(((osp.join(directory, f), a) for f, a in sources if osp.isdir(osp.join(directory, f))),
                             (osp.join(directory, name), None))
        present = list_checkpoints(folder)
        if not osp.isdir(folder):
            looked = " or ".join(f'"{osp.join(directory, f)}"' for f, _ in sources)
            try:
                listing = ", ".join(sorted(os.listdir(directory))) or "nothing"
            except OSError:
                listing = "nothing (no such folder)"
            raise FileNotFoundError(
                f"No checkpoint folder {looked}: --model-dir must be the --output-dir of a training run of "
                f'{self.cfg.TRAINER.NAME}. "{directory}" holds: {listing}.')
        if epoch is not None:
            model_file = f"model.pth.tar-{epoch}"
        elif BEST_NAME in present:
            model_file = BEST_NAME
        elif present:
            model_file = present[0]
            print(f'No {BEST_NAME} in "{folder}" (the run never validated, as with TEST.FINAL_MODEL last_step); '
                  f"loading the last checkpoint, {model_file} (--load-epoch N selects another)")
        else:
            model_file = BEST_NAME
        model_path = osp.join(folder, model_file)
        if not osp.isfile(model_path):
            epochs = [f for f in present if f != BEST_NAME]
            if present:
                choices = (f"--load-epoch {' / '.join(f.rsplit('-', 1)[1] for f in epochs)} selects "
                           f"{', '.join(epochs)}" if epochs else "")
                best = f"{BEST_NAME} is loaded without --load-epoch" if BEST_NAME in present else ""
                hint = "; ".join(x for x in (choices, best) if x)
                listing = f'The checkpoints in "{folder}": {", ".join(present)} ({hint}).'
            else:
                listing = (f'"{folder}" holds no checkpoint (model.pth.tar-N or {BEST_NAME}); did that run finish '
                           "an epoch?")
            raise FileNotFoundError(f'Model not found at "{model_path}". {listing}')
        return model_path, adapt

    def set_model_mode(self, mode="train", names=None):
        for name in self.get_model_names(names):
            if mode == "train":
                self._models[name].train()
            elif mode in ("test", "eval"):
                self._models[name].eval()
            else:
                raise KeyError(f"mode must be train, test or eval, got {mode!r}")

    def update_lr(self, names=None):
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def detect_anomaly(self, loss):
        if not torch.isfinite(loss).all():
            raise NonFiniteError(f"Loss is infinite or NaN ({loss.detach().flatten()[:4].tolist()}) at "
                                 f"{self.step_label()}; lower the learning rate, or set TRAIN.NONFINITE skip")

    def step_label(self):
        """`epoch E/N, batch B/M (global step S)` for messages (1-based epoch and batch)."""
        return step_label(self)

    # ------------------------------------------------------------ TensorBoard
    def init_writer(self, log_dir):
        if self.__dict__.get("_writer") is None:
            from torch.utils.tensorboard import SummaryWriter

            print(f"Initialize tensorboard (log_dir={log_dir})")
            self._writer = SummaryWriter(log_dir=log_dir)

    def close_writer(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write_scalar(self, tag, scalar_value, global_step=None):
        if self._writer is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)

    # ------------------------------------------------------------ loop
    def train(self, start_epoch, max_epoch):
        """The loop of the module docstring. `run_error` holds the exception that stopped it (None
        while running and after a completed run)."""
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        with ending_in_finally(self):
            self.before_train()
            if self.start_epoch >= self.max_epoch:  # resumed after the last epoch: only the final test is left
                self.epoch = self.start_epoch - 1
            for self.epoch in range(self.start_epoch, self.max_epoch):
                stop_if_signalled()
                self.before_epoch()
                self.run_epoch()
                self.after_epoch()
                stop_if_signalled()  # an epoch stopped in its evaluation writes no checkpoint
                self.checkpoint_epoch()
            stop_if_signalled()
            self.after_train()

    def before_train(self):
        pass

    def after_train(self):
        pass

    def where_stopped(self):
        """Where the loop is, for the line printed when a run is stopped: "in epoch 2/3 (batch 1/2)"."""
        if getattr(self, "batch_idx", None) is not None and getattr(self, "num_batches", None):
            return f"in epoch {self.epoch + 1}/{self.max_epoch} (batch {self.batch_idx + 1}/{self.num_batches})"
        return f"at epoch {getattr(self, 'epoch', 0) + 1}/{self.max_epoch}"

    def on_abort(self, error):
        """`error` is stopping the run (any exception): subclasses let their listeners write what
        they hold. Must not raise."""
        pass

    def finish_train(self):
        """Always the last act of train(), completed or not: the TensorBoard writer is closed."""
        self.close_writer()

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def checkpoint_epoch(self):
        """The epoch's last act: write its checkpoints (after after_epoch and its hooks)."""
        pass

    def run_epoch(self):
        raise NotImplementedError

    def test(self):
        raise NotImplementedError

    def parse_batch_train(self, batch):
        raise NotImplementedError

    def parse_batch_test(self, batch):
        raise NotImplementedError

    def forward_backward(self, batch):
        raise NotImplementedError

    def model_inference(self, input):
        raise NotImplementedError

    # ------------------------------------------------------------ steps
    def model_zero_grad(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss):
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss, names=None):
        """Dassl's step for the models `names`, through the one step every trainer uses
        (`step.optimizer_step`: TRAIN.NONFINITE and the checks around the update); True when the
        step was taken."""
        optimizers = {name: self._optims[name] for name in self.get_model_names(names)
                      if self._optims[name] is not None}
        return optimizer_step(self, loss, optimizers, scaler=getattr(self, "scaler", None))

    # Per-step lifecycle points: gradients are present and unscaled in after_backward (before
    # the optimizer step); after_step follows the step. Plugins listen here (gates issue).
    def after_backward(self):
        pass

    def after_step(self):
        pass

    def after_test(self, split, results):
        """Called by test() with the split evaluated and the evaluator's results dict."""
        pass


class SimpleTrainer(TrainerBase):
    """A trainer with data, a model, an evaluator and Dassl's default lifecycle methods."""

    def __init__(self, cfg):
        super().__init__()
        self.check_cfg(cfg)
        policy = cfg.TRAIN.get("NONFINITE", "stop")
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f"TRAIN.NONFINITE must be one of {NONFINITE_POLICIES}, got {policy!r}")
        if cfg.TRAIN.get("DETERMINISTIC", False):
            set_deterministic(True)
        if torch.cuda.is_available() and cfg.USE_CUDA:
            self.device = torch.device("cuda")
        else:
            self.device = torch.device("cpu")
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.cfg = cfg
        self.build_data_loader()
        self.build_model()
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -np.inf
        self.nonfinite_skips = 0  # steps skipped under TRAIN.NONFINITE skip (checkpointed)
        self._best_to_save = None

    def check_cfg(self, cfg):
        """Check whether some variables are set correctly for the trainer (subclasses)."""
        pass

    def build_data_loader(self):
        from ..data import DataManager

        dm = DataManager(self.cfg)
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm

    def build_model(self):
        raise NotImplementedError("a SimpleTrainer subclass must build its model")

    def train(self):
        # One writer per run folder (the command line already holds it; the hold nests).
        with hold_run_folder(self.output_dir):
            super().train(self.start_epoch, self.max_epoch)

    def where_stopped(self):
        """Where the loop is and the last complete checkpoint, which a resume starts from."""
        where = super().where_stopped()
        if getattr(self, "_training_done", False):
            where = "in the final test (training was complete)"
        name = self.get_model_names()[0] if self.get_model_names() else None
        epochs = [f for f in list_checkpoints(osp.join(self.output_dir, name)) if f != BEST_NAME] if name else []
        if epochs:
            return (f'{where}; the last complete checkpoint is epoch {epochs[0].rsplit("-", 1)[1]} '
                    f'({osp.join(self.output_dir, name, epochs[0])})')
        return f"{where}; no checkpoint was written yet, so a resume starts from epoch 1"

    # What TRAIN.OVERWRITE deletes of an older run in OUTPUT_DIR besides the model folders: the
    # results file the trainers write and the diagnostics plugin's folder.
    RUN_OUTPUTS = ("results.json", "diagnostics")

    def before_train(self):
        claim_output_dir(self.cfg, self.output_dir, overwrite=bool(self.cfg.TRAIN.get("OVERWRITE", False)),
                         previous_run_paths=self.get_model_names() + list(self.RUN_OUTPUTS))
        directory = self.cfg.OUTPUT_DIR
        if self.cfg.RESUME:
            directory = self.cfg.RESUME
        self.start_epoch = self.resume_model_if_exist(directory)
        writer_dir = osp.join(self.output_dir, "tensorboard")
        mkdir_if_missing(writer_dir)
        self.init_writer(writer_dir)
        self.time_start = time.time()

    def after_train(self):
        self._training_done = True
        print("Finish training")
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                print("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                print("Deploy the last-epoch model")
            self.test()
        elapsed = str(datetime.timedelta(seconds=round(time.time() - self.time_start)))
        print(f"Elapsed: {elapsed}")

    def after_epoch(self):
        """Dassl's validation for TEST.FINAL_MODEL best_val; the saves follow in checkpoint_epoch."""
        do_test = not self.cfg.TEST.NO_TEST
        if do_test and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr_result = next(iter(self.test(split="val").values()))  # Dassl's: the first metric
            is_best = curr_result > self.best_result
            if is_best:
                self.best_result = curr_result
                self._best_to_save = curr_result

    def checkpoint_epoch(self):
        """model-best.pth.tar when this epoch's validation was the best, then model.pth.tar-<epoch>
        every TRAIN.CHECKPOINT_FREQ epochs and after the last (Dassl's files and rule)."""
        last_epoch = (self.epoch + 1) == self.max_epoch
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        meet_checkpoint_freq = (self.epoch + 1) % freq == 0 if freq > 0 else False
        if self._best_to_save is not None:
            self.save_model(self.epoch, self.output_dir, val_result=self._best_to_save,
                            model_name="model-best.pth.tar")
            self._best_to_save = None
        if meet_checkpoint_freq or last_epoch:
            self.save_model(self.epoch, self.output_dir)

    def test(self, split=None):
        """Evaluate on `split` (TEST.SPLIT by default; "val" without a val loader means "test") and
        return the evaluator's results dict ({"accuracy": %, ...}; Dassl returns its first value).

        Only the evaluation loop runs without autograd: the after_test hooks run with it as
        elsewhere (a plugin may measure gradients there, as the diagnostics' task-loss rho does)."""
        split, results = evaluate_split(self, split)
        self.after_test(split, results)
        return results

    def model_inference(self, input):
        return self.model(input)

    def parse_batch_test(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def get_current_lr(self, names=None):
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]


class TrainerX(SimpleTrainer):
    """A trainer with one labelled training loader (`train_loader_x`)."""

    def run_epoch(self):
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time = AverageMeter()
        data_time = AverageMeter()
        self.num_batches = len(self.train_loader_x)
        end = time.time()
        for self.batch_idx, batch in enumerate(self.train_loader_x):
            data_time.update(time.time() - end)
            loss_summary = self.forward_backward(batch)
            kill_point("step")
            stop_if_signalled()
            batch_time.update(time.time() - end)
            losses.update(loss_summary)

            meet_freq = (self.batch_idx + 1) % self.cfg.TRAIN.PRINT_FREQ == 0
            only_few_batches = self.num_batches < self.cfg.TRAIN.PRINT_FREQ
            if meet_freq or only_few_batches:
                nb_remain = self.num_batches - self.batch_idx - 1
                nb_remain += (self.max_epoch - self.epoch - 1) * self.num_batches
                eta = str(datetime.timedelta(seconds=int(batch_time.avg * nb_remain)))
                info = [
                    f"epoch [{self.epoch + 1}/{self.max_epoch}]",
                    f"batch [{self.batch_idx + 1}/{self.num_batches}]",
                    f"time {batch_time.val:.3f} ({batch_time.avg:.3f})",
                    f"data {data_time.val:.3f} ({data_time.avg:.3f})",
                    f"{losses}",
                    f"lr {self.get_current_lr():.4e}",
                    f"eta {eta}",
                ]
                print(" ".join(info))

            n_iter = self.epoch * self.num_batches + self.batch_idx
            for name, meter in losses.meters.items():
                self.write_scalar("train/" + name, meter.avg, n_iter)
            self.write_scalar("train/lr", self.get_current_lr(), n_iter)
            end = time.time()

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)
