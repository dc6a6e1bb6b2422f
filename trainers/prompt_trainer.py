"""What every CoOp-family trainer shares, so that each method's file holds only its model.

`PromptTrainer` builds the frozen backbone, asks the subclass for its CLIP wrapper
(`build_custom_clip`, CoOp's `CustomCLIP`), puts every learnable tensor into an explicitly
named optimizer parameter group, and runs the training step: forward, named loss terms, then
the engine's one optimizer step (`engine.step.optimizer_step`: backward, the `after_backward`
point with gradients present and unscaled, the update, `after_step`). It calls the plugins'
lifecycle hooks with its `HookContext` (gates/hookspecs.py gives the order) and saves their
state with its checkpoints. Checkpoints hold the registered prompt learner's state only (never
the frozen CLIP), with a record of the prompt's size keys; `ReleasedLayout` reads the layouts
in which the original code saved the same learner (MaPLe's whole-model checkpoints).
"""
import re
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from gates.context import HookContext

from .backbone import build_backbone
from .backbone.adapter import capture_embeddings
from .engine import TrainerX, build_lr_scheduler, build_optimizer
from .engine.evaluator import compute_accuracy
from .engine.step import optimizer_step
from .plugins import get_plugins
from .prompting import ClassPromptTemplate

PRECISIONS = ("fp16", "fp32", "amp")
# Buffers that CoOp's prompt learner saved in its checkpoints; they are rebuilt from the
# classnames, so loading an original CoOp checkpoint drops them (as CoOp's load_model does).
REBUILT_BUFFERS = ("token_prefix", "token_suffix")
# Keys of the frozen CLIP in checkpoints that hold a whole CustomCLIP (MaPLe's code and its forks
# register the whole model): its image and text encoders and logit scale.
FROZEN_CLIP_PREFIXES = ("image_encoder.", "text_encoder.", "logit_scale")
# The method-node keys that fix the shape and meaning of the learnable tensors: recorded with
# every checkpoint and checked when one is loaded (N_CTX, N_CTX_TEXT, PROMPT_DEPTH_VISION, CSC, ...).
PROMPT_KEY_PATTERN = re.compile(r"^(N_CTX\w*|PROMPT_DEPTH\w*|CSC)$")


@dataclass(frozen=True)
class ReleasedLayout:
    """How the original code saved this trainer's learnable state, so its checkpoints load here.

    `folder`: the model folder below the output folder (the name its trainer registered, e.g.
    MaPLe's "MultiModalPromptLearner"); `prefix`: what its state-dict keys carry before the
    learner's own names (MaPLe registers the whole CustomCLIP: "prompt_learner."); keys of the
    frozen CLIP (`FROZEN_CLIP_PREFIXES`) are dropped; `renames`: (regex, replacement) pairs for
    parameter names that differ. Any other key is kept, so the load names it as unexpected.
    """

    folder: str
    source: str  # whose code writes it, for the message
    prefix: str = ""
    renames: tuple = field(default_factory=tuple)

    def adapt(self, state_dict):
        adapted, frozen = {}, 0
        for key, value in state_dict.items():
            if self.prefix and key.startswith(self.prefix):
                key = key[len(self.prefix):]
            elif key.startswith(FROZEN_CLIP_PREFIXES):
                frozen += 1
                continue
            for pattern, replacement in self.renames:
                key = re.sub(pattern, replacement, key)
            adapted[key] = value
        print(f'Reading a checkpoint saved by {self.source} ("{self.folder}/"): learner keys without their '
              f'"{self.prefix}" prefix; {frozen} tensor(s) of the frozen CLIP ignored')
        return adapted


class PromptTrainer(TrainerX):
    """Base class of the CoOp-family trainers (what CoOp's `CoOp(TrainerX)` class does, once).

    Subclasses set `CFG_NODE` (their node under TRAINER, e.g. "COOP"), implement
    `add_config(cfg)` and `build_custom_clip(cfg, classnames, backbone)`; the returned module
    has a `prompt_learner` holding every learnable tensor and maps images to logits. A trainer
    that extends another (a gated trainer, or a plugin's variant of a built-in) names it in
    `PARENT_TRAINER`.
    """

    CFG_NODE = None
    MODEL_NAME = "prompt_learner"
    # The trainer this one extends (a gated trainer: its ungated parent, e.g. "CoOp" for
    # CoOpGated), recorded in results.json; `gatescope summarize` compares the two ("Δ vs parent").
    PARENT_TRAINER = None
    # Layouts in which the original code saved this learner (ReleasedLayout), tried after
    # gatescope's own `<model-dir>/prompt_learner/` when weights are loaded for evaluation.
    RELEASED_LAYOUTS = ()

    @staticmethod
    def add_config(cfg):
        raise NotImplementedError

    def build_custom_clip(self, cfg, classnames, backbone):
        raise NotImplementedError

    # ------------------------------------------------------------ config
    @property
    def method_cfg(self):
        return self.cfg.TRAINER[self.CFG_NODE]

    def check_cfg(self, cfg):
        prec = cfg.TRAINER[self.CFG_NODE].PREC
        if prec not in PRECISIONS:
            raise ValueError(f"TRAINER.{self.CFG_NODE}.PREC must be one of {PRECISIONS}, got {prec!r}")

    def resolve_precision(self):
        """fp16 and amp need a GPU; on the CPU they fall back to fp32 with a warning."""
        prec = self.method_cfg.PREC
        if prec in ("fp16", "amp") and self.device.type != "cuda":
            warnings.warn(f"TRAINER.{self.CFG_NODE}.PREC {prec} needs a GPU; running in fp32 on the CPU",
                          stacklevel=2)
            print(f"Warning: TRAINER.{self.CFG_NODE}.PREC {prec} needs a GPU; running in fp32 on the CPU")
            return "fp32"
        return prec

    # ------------------------------------------------------------ model
    def build_model(self):
        cfg = self.cfg
        self.prec = self.resolve_precision()
        classnames = self.dm.dataset.classnames
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        backbone = build_backbone(cfg)
        if self.prec == "fp16":
            backbone.half()
        print("Building custom CLIP")
        self.model = self.build_custom_clip(cfg, classnames, backbone)
        print("Turning off gradients in both the image and the text encoder")
        self.model.to(self.device)
        groups = self.param_groups()
        check_param_groups(self.model, groups)
        for group in groups:
            n = sum(p.numel() for p in group["params"])
            print(f"Parameter group '{group['name']}': {n:,} learnable values")
        self.optim = build_optimizer(groups, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model(self.MODEL_NAME, self.model.prompt_learner, self.optim, self.sched)
        self.scaler = torch.amp.GradScaler("cuda") if self.prec == "amp" else None

    def param_groups(self):
        """Learnable tensors in named groups; the default puts all of them in "prompt"."""
        return [{"name": "prompt", "params": [p for p in self.model.prompt_learner.parameters()
                                              if p.requires_grad]}]

    # ------------------------------------------------------------ training step
    def compute_losses(self, output, label):
        """Named loss terms; their sum is minimised. Subclasses add auxiliary terms."""
        return {"ce": F.cross_entropy(output, label)}

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        # What the lifecycle hooks may read about this step (e.g. the diagnostics' mutual
        # information between the gate's choice and the label or the domain).
        self.batch_labels, self.batch_domains = label, batch.get("domain")
        with torch.autocast(device_type=self.device.type, enabled=self.prec == "amp"):
            output = self.model(image)
            losses = self.compute_losses(output, label)
            loss = sum(losses.values())
        # The step's named terms for the plugins (HookContext.batch_losses), detached: a skipped step's
        # graph must not stay alive into the next one.
        self.batch_losses = {name: value.detach() for name, value in losses.items()}
        stepped = self.backward_and_step(loss, losses)
        summary = None  # a skipped step (TRAIN.NONFINITE skip) adds nothing to the running means
        if stepped:
            summary = {"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}
            if len(losses) > 1:
                summary.update({name: value.item() for name, value in losses.items()})
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def backward_and_step(self, loss, losses=None):
        """The engine's one optimizer step (engine/step.py) on this trainer's optimizer; False
        when TRAIN.NONFINITE skip skipped it."""
        return optimizer_step(self, loss, {self.MODEL_NAME: self.optim}, losses=losses, scaler=self.scaler)

    # ------------------------------------------------------------ what plugins see
    @property
    def hook_context(self):
        """The HookContext handed to every lifecycle hook (one per trainer)."""
        context = self.__dict__.get("_hook_context")
        if context is None:
            context = self.__dict__["_hook_context"] = HookContext(self)
        return context

    @property
    def prompt_templates(self):
        """The ClassPromptTemplate modules of the prompt learner."""
        return [m for m in self.model.prompt_learner.modules() if isinstance(m, ClassPromptTemplate)]

    @staticmethod
    def capture_embeddings():
        """A context manager collecting (image features, text features) of the forward passes inside it."""
        return capture_embeddings()

    # ------------------------------------------------------------ lifecycle hooks
    # Defined here, not in the engine; both engines call them at the same points (Dassl's through
    # engine/dassl_adapter.py).
    @property
    def plugins(self):
        return get_plugins()

    def call_hook(self, hook, /, **kwargs):
        """Call a lifecycle hook; a plugin that raises is named with its distribution (PluginError)."""
        return self.plugins.call_lifecycle(hook, context=self.hook_context, **kwargs)

    def before_train(self):
        super().before_train()  # resumes: restores the trainer's state and stashes the plugins'
        states = self.__dict__.pop("_plugin_states", None)
        if states:
            self.plugins.load_state_dicts(self.hook_context, states)
        self.call_hook("before_train")

    def before_epoch(self):
        super().before_epoch()
        self.call_hook("before_epoch")

    def after_backward(self):
        self.call_hook("after_backward")

    def after_step(self):
        self.call_hook("after_step")
        super().after_step()  # the engine's point (on Dassl's: a safe point for a stop signal)

    def after_test(self, split, results):
        super().after_test(split, results)
        self.call_hook("after_test", split=split, results=dict(results))

    def after_epoch(self):
        super().after_epoch()
        self.call_hook("after_epoch")

    def on_abort(self, error):
        super().on_abort(error)
        self.plugins.call_while_stopping("on_abort", context=self.hook_context, error=error)

    def finish_train(self):
        """after_train for every plugin, then the engine's end (the writer closed last). While an
        exception is stopping the run, a failing after_train is reported, not raised over it."""
        try:
            if self.run_error is None:
                self.call_hook("after_train")
            else:
                self.plugins.call_while_stopping("after_train", context=self.hook_context)
        finally:
            super().finish_train()

    def gate_listener(self, name, output, cond, phase):
        """Handed to gated models: forwards each gate output to the gate_output hook."""
        self.call_hook("gate_output", name=name, output=output, cond=cond, phase=phase)

    def training_state(self):
        """The engine's (RNG, best result, skips) plus every plugin's state (their state_dict hooks)."""
        state = super().training_state()
        state["plugins"] = self.plugins.state_dicts(self.hook_context)
        return state

    def load_training_state(self, state):
        super().load_training_state(state)
        # Handed to the plugins in before_train, once the whole checkpoint is loaded.
        self._plugin_states = state.get("plugins") or {}

    # ------------------------------------------------------------ checkpoints
    def prompt_identity(self):
        """The method node's prompt-size keys (`PROMPT_KEY_PATTERN`), by their full names."""
        node = self.cfg.TRAINER.get(self.CFG_NODE) if self.CFG_NODE else None
        if node is None:
            return {}
        return {f"TRAINER.{self.CFG_NODE}.{key}": value for key, value in node.items()
                if PROMPT_KEY_PATTERN.match(key) and not isinstance(value, dict)}

    def checkpoint_sources(self, name):
        """gatescope's own folder, then the original code's (RELEASED_LAYOUTS)."""
        sources = super().checkpoint_sources(name)
        if name == self.MODEL_NAME:
            sources += [(layout.folder, layout.adapt) for layout in self.RELEASED_LAYOUTS]
        return sources

    def load_model_state_dict(self, name, state_dict):
        """Load learnable state, tolerating CoOp's saved prompt buffers; say what does not fit."""
        state_dict = {k: v for k, v in state_dict.items() if k not in REBUILT_BUFFERS}
        module = self._models[name]
        own = module.state_dict()
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        wrong_shape = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                       for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
        if missing or unexpected or wrong_shape:
            hint = (self._class_specific_hint(state_dict, own)
                    or "was it made for another trainer, backbone, N_CTX or class count?")
            raise ValueError(
                f"the checkpoint for '{name}' does not fit trainer {self.cfg.TRAINER.NAME} with "
                f"backbone {self.cfg.MODEL.BACKBONE.NAME} and {self.num_classes} classes "
                f"(missing: {missing}, unexpected: {unexpected}, shape mismatch: {wrong_shape}); "
                f"{hint}"
            )
        module.load_state_dict(state_dict)

    def _class_specific_hint(self, state_dict, own):
        """The CSC sentence for a shape error that comes from class-specific context, or ""."""
        for key in self.class_specific_keys():
            if key in state_dict and key in own and state_dict[key].shape != own[key].shape:
                return (f"'{key}' is a class-specific context (CSC True: one context per class); the checkpoint's "
                        f"is for {state_dict[key].shape[0]} classes and this run has {own[key].shape[0]}: a "
                        "class-specific context cannot be applied to other classes. Evaluate on the classes it was "
                        "trained on, or train with TRAINER.COOP.CSC False to transfer to new classes")
        own_specific = set(self.class_specific_keys())
        for key, value in state_dict.items():
            if key in own and key not in own_specific and value.dim() == own[key].dim() + 1:
                return (f"'{key}' in the checkpoint has one more dimension than this run's: it holds class-specific "
                        f"context (CSC True, {value.shape[0]} classes) and this run has CSC False")
        return ""


def check_param_groups(model, groups):
    """Every learnable tensor of `model` sits in exactly one group; nothing frozen is in one."""
    seen = {}
    for group in groups:
        for p in group["params"]:
            if id(p) in seen:
                raise ValueError(f"a tensor is in both parameter groups '{seen[id(p)]}' and '{group['name']}'")
            if not p.requires_grad:
                raise ValueError(f"parameter group '{group['name']}' holds a frozen tensor")
            seen[id(p)] = group["name"]
    left_out = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if left_out:
        raise ValueError(f"learnable tensors in no optimizer parameter group: {left_out}")
