"""`HookContext`: the run as a plugin sees it, handed to every lifecycle hook.

It is the only surface plugins use (the built-in diagnostics and remedies included): a fixed,
documented set of read-only views on the trainer, plus `store`, where a plugin keeps its own
per-run objects. The trainer is held by weak reference (as Detectron2's hooks hold theirs), so a
plugin that keeps a context does not keep a finished trainer and its model alive.

What a view returns is the trainer's live object (the model, the optimizer's parameter groups,
the loaders): a plugin may use it as it is documented to be used (a remedy edits gradients in
after_backward; a probe switches the model to eval mode inside `quiet_probe`), but it sets no
attribute on the trainer. Every name below reads the trainer attribute of the same name unless
its line says otherwise; a view of something the trainer does not have (yet) raises
AttributeError, so `hasattr(context, "batch_idx")` says whether a training batch has started.
"""
import weakref

__all__ = ["HookContext"]


def _view(name, doc):
    def read(self):
        return getattr(self.trainer, name)
    return property(read, doc=doc)


class HookContext:
    """What every lifecycle hook receives as `context`; one per trainer, the same object in
    every hook of that trainer's run."""

    __slots__ = ("_trainer", "store", "__weakref__")

    def __init__(self, trainer):
        self._trainer = weakref.ref(trainer)
        # Per-run objects of the plugins, keyed by a name of the plugin's choosing (the
        # diagnostics keep their recorder under "diagnostics"). Lives as long as the context.
        self.store = {}

    @property
    def trainer(self):
        """The trainer itself, for what no view below covers; prefer the views (they are the
        contract). ReferenceError once the trainer is gone."""
        trainer = self._trainer()
        if trainer is None:
            raise ReferenceError("this HookContext's trainer no longer exists; a plugin kept the context "
                                 "past the end of its run")
        return trainer

    # ------------------------------------------------------------ the run
    cfg = _view("cfg", "The run's frozen config (a yacs CfgNode), plugins' keys included.")
    output_dir = _view("output_dir", "The run's output folder (OUTPUT_DIR); plugins write under it.")
    device = _view("device", "The torch.device the model runs on.")
    prec = _view("prec", "The precision in effect: fp32, fp16 or amp (fp16/amp fall back to fp32 on a CPU).")

    @property
    def trainer_name(self):
        """cfg.TRAINER.NAME."""
        return self.cfg.TRAINER.NAME

    @property
    def parent_trainer(self):
        """The name of the ungated trainer this one extends (the class attribute PARENT_TRAINER,
        e.g. "CoOp" for CoOpGated), or None; summaries compare a gated method with it."""
        return getattr(type(self.trainer), "PARENT_TRAINER", None)

    @property
    def eval_only(self):
        """True for an evaluation-only run (train.py --eval-only)."""
        return bool(getattr(self.trainer, "eval_only", False))

    # ------------------------------------------------------------ where the loop is
    start_epoch = _view("start_epoch", "First epoch this process trains (0-based; > 0 after a resume).")
    max_epoch = _view("max_epoch", "Number of epochs of the run (OPTIM.MAX_EPOCH).")
    epoch = _view("epoch", "Current epoch (0-based).")
    batch_idx = _view("batch_idx", "Current batch within the epoch (0-based); absent before the first batch.")
    num_batches = _view("num_batches", "Batches per epoch; absent before the first epoch.")

    @property
    def global_step(self):
        """epoch * num_batches + batch_idx: the training step (0-based)."""
        return self.epoch * self.num_batches + self.batch_idx

    def step_label(self):
        """`epoch E/N, batch B/M (global step S)` (1-based epoch and batch), for messages."""
        return self.trainer.step_label()

    # ------------------------------------------------------------ the current batch
    batch_labels = _view("batch_labels", "Labels (B,) of the current training batch.")
    batch_domains = _view("batch_domains", "Domain labels (B,) of the current training batch, or None.")
    batch_losses = _view("batch_losses", "The current training step's named loss terms {name: scalar tensor, "
                                         "detached} (compute_losses; their sum is the loss minimised).")

    @property
    def loss_weights(self):
        """{term name: the weight the trainer multiplied that term's raw value by this step} for the
        terms a trainer weights by schedule (BiDirMaPLe's "cycle"); {} when it names none."""
        return dict(getattr(self.trainer, "loss_weights", None) or {})

    # ------------------------------------------------------------ model and optimizer
    model = _view("model", "The CLIP wrapper (nn.Module); `model.prompt_learner` holds every learnable tensor.")
    @property
    def gate_heads(self):
        """The model's gates as placed by the trainer (gates.AppliedGate, one per target); [] for
        an ungated trainer."""
        return getattr(self.trainer, "gate_heads", [])
    optim = _view("optim", "The optimizer (its `param_groups` are `param_groups` below).")

    @property
    def param_groups(self):
        """The optimizer's parameter groups (dicts with "name", "params", "lr", ...): "prompt" and,
        for gated trainers, "gate". Live: a remedy may set a group's weight decay."""
        return self.optim.param_groups

    prompt_templates = _view("prompt_templates", "The ClassPromptTemplate modules of the prompt learner "
                                                 "(where the learnable context meets the class tokens).")

    # ------------------------------------------------------------ data and evaluation
    train_loader_x = _view("train_loader_x", "The labelled training loader (Dassl's name).")
    val_loader = _view("val_loader", "The validation loader, or None when the dataset has no val split.")
    test_loader = _view("test_loader", "The test loader.")
    num_classes = _view("num_classes", "Number of classes of the training set.")
    parse_batch_train = _view("parse_batch_train", "parse_batch_train(batch) -> (input, label) on the device.")
    parse_batch_test = _view("parse_batch_test", "parse_batch_test(batch) -> (input, label) on the device.")
    model_inference = _view("model_inference", "model_inference(input) -> logits (B, C), as the evaluation "
                                               "computes them.")
    compute_losses = _view("compute_losses", "compute_losses(logits, labels) -> {name: scalar tensor}, the "
                                             "named loss terms of a training step (their sum is minimised).")
    capture_embeddings = _view("capture_embeddings", "capture_embeddings() -> a context manager collecting the "
                                                     "(image features, text features) of every forward pass "
                                                     "made inside it.")

    # ------------------------------------------------------------ outputs and health
    write_scalar = _view("write_scalar", "write_scalar(tag, value, global_step): a TensorBoard scalar (a no-op "
                                         "when the run has no writer, e.g. evaluation only).")
    nonfinite_skips = _view("nonfinite_skips", "Steps skipped so far for NaN/Inf values (TRAIN.NONFINITE skip).")

    @property
    def last_grad_clip(self):
        """The last step's gradient clipping (OPTIM.GRAD_CLIP): {"max_norm": float, "total_norm":
        0-d tensor, the L2 norm of all gradients before clipping}, or None when clipping is off."""
        return getattr(self.trainer, "last_grad_clip", None)

    @property
    def error(self):
        """The exception stopping the run (in on_abort and after_train), else None."""
        return getattr(self.trainer, "run_error", None)

    def __repr__(self):
        trainer = self._trainer()
        return f"HookContext({type(trainer).__name__ if trainer is not None else 'trainer gone'})"
