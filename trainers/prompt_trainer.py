"""What every CoOp-family trainer shares, so that each method's file holds only its model.

`PromptTrainer` builds the frozen backbone, asks the subclass for its CLIP wrapper
(`build_custom_clip`), puts every learnable tensor into an explicitly named optimizer
parameter group, and runs the training step: forward, named loss terms, backward, the
`after_backward` point (gradients present and unscaled), the optimizer step, `after_step`.
Checkpoints hold the registered prompt learner's state only (never the frozen CLIP).
"""
import json
import math
import os
import warnings

import torch
import torch.nn.functional as F

from gates.manager import get_plugins

from .backbone import build_backbone
from .engine import TrainerX, build_lr_scheduler, build_optimizer
from .engine.trainer import NonFiniteError
from .engine.evaluator import compute_accuracy
from .engine.utils import write_json_atomic

PRECISIONS = ("fp16", "fp32", "amp")
# Buffers that CoOp's prompt learner saved in its checkpoints; they are rebuilt from the
# classnames, so loading an original CoOp checkpoint drops them (as CoOp's load_model does).
REBUILT_BUFFERS = ("token_prefix", "token_suffix")
RESULTS_FILE = "results.json"


class PromptTrainer(TrainerX):
    """Base class of the CoOp-family trainers.

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
        """Backward, after_backward, optimizer step, after_step; False when the step was skipped.

        A NaN/Inf loss, or (fp32/fp16) a NaN/Inf in a parameter group's gradient, stops the run
        (TRAIN.NONFINITE stop) or skips the step (skip). With amp, overflowing gradients are the
        GradScaler's business (it skips the step and lowers the scale), so only the loss is checked.
        """
        if not torch.isfinite(loss.detach()).all():
            terms = {k: float(v.detach()) for k, v in (losses or {}).items() if v.numel() == 1}
            return self.nonfinite("the loss", f"loss {float(loss.detach().flatten()[0])}"
                                  + (f" (terms: {terms})" if len(terms) > 1 else ""))
        self.optim.zero_grad()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optim)
        else:
            loss.backward()
        grad_l2 = self.group_grad_l2()
        if self.scaler is None:
            for name, l2 in grad_l2.items():
                if not math.isfinite(l2):
                    return self.nonfinite(f"parameter group '{name}'", self.count_nonfinite(name))
        self.after_backward()
        if self.scaler is not None:
            self.scaler.step(self.optim)
            self.scaler.update()
        else:
            self.optim.step()
        self.after_step()
        self.last_finite = {"step": self.step_label(), "loss": float(loss.detach()), "grad_l2": grad_l2}
        return True

    def group_grad_l2(self):
        """{group name: L2 norm of its gradient} (NaN/Inf when a value is).

        Every step runs this, so no float64 copy of the gradients is made (norms accumulate in
        float32, also for fp16 gradients) and the host waits for the device once, not per group.
        """
        names, norms = [], []
        for i, group in enumerate(self.optim.param_groups):
            grads = [p.grad.detach() for p in group["params"] if p.grad is not None]
            names.append(group.get("name", f"group{i}"))
            norms.append(torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]))
                if grads else torch.zeros((), device=self.device))
        values = torch.stack([n.to(self.device) for n in norms]).tolist() if norms else []
        return dict(zip(names, values))

    def count_nonfinite(self, group_name):
        group = next(g for i, g in enumerate(self.optim.param_groups) if g.get("name", f"group{i}") == group_name)
        grads = [p.grad.detach() for p in group["params"] if p.grad is not None]
        n_nan = sum(int(torch.isnan(g).sum()) for g in grads)
        n_inf = sum(int(torch.isinf(g).sum()) for g in grads)
        return f"{n_nan} NaN and {n_inf} Inf among {sum(g.numel() for g in grads):,} gradient values"

    def nonfinite(self, where, found):
        """TRAIN.NONFINITE: "skip" counts and skips the step (returns False); "stop" lets the
        plugins write their files (on_abort), then raises NonFiniteError naming the step, `where`
        and the last finite values."""
        self.optim.zero_grad()
        if self.cfg.TRAIN.get("NONFINITE", "stop") == "skip":
            self.nonfinite_skips += 1
            print(f"Skipping {self.step_label()}: non-finite values in {where} ({found}); "
                  f"{self.nonfinite_skips} step(s) skipped so far (TRAIN.NONFINITE skip)")
            return False
        last = getattr(self, "last_finite", None)
        if last is None:
            previous = "no earlier step of this process was finite"
        else:
            norms = ", ".join(f"{k} {v:.6g}" for k, v in last["grad_l2"].items())
            previous = f"last finite step ({last['step']}): loss {last['loss']:.6g}, gradient L2 by group: {norms}"
        error = NonFiniteError(
            f"Non-finite values in {where} at {self.step_label()}: {found}. {previous}. "
            "The diagnostics (when on) were written before stopping. Lower OPTIM.LR (or GATE.LR_MULT), "
            "or set TRAIN.NONFINITE skip to skip such steps.")
        try:
            self.call_hook("on_abort", error=error)
        except Exception as hook_error:  # the original error matters more than a failing flush
            print(f"Warning: while stopping, {hook_error}")
        raise error

    # ------------------------------------------------------------ lifecycle hooks
    # Defined here, not in the engine, so that they also run on Dassl's engine.
    @property
    def plugins(self):
        return get_plugins()

    def call_hook(self, hook, /, **kwargs):
        """Call a lifecycle hook; a plugin that raises is named with its distribution (PluginError)."""
        return self.plugins.call_lifecycle(hook, trainer=self, **kwargs)

    def before_train(self):
        super().before_train()
        self.call_hook("before_train")

    def before_epoch(self):
        super().before_epoch()
        self.call_hook("before_epoch")

    def after_backward(self):
        self.call_hook("after_backward")

    def after_step(self):
        self.call_hook("after_step")

    def after_epoch(self):
        super().after_epoch()
        self.call_hook("after_epoch")

    def after_train(self):
        super().after_train()
        self.call_hook("after_train")

    def test(self, split=None):
        evaluate, results = self.evaluator.evaluate, {}

        def capture():
            results.update(evaluate())
            return results
        self.evaluator.evaluate = capture
        try:
            first = super().test(split)
        finally:
            self.evaluator.evaluate = evaluate
        split = split or self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is None:
            split = "test"
        self.write_results(split, results)
        self.call_hook("after_test", split=split, results=dict(results))
        return first

    def write_results(self, split, results):
        """Merge this evaluation into `<output>/results.json`, which `gatescope summarize` reads.

        Rewritten atomically after every test, so a killed run leaves the last complete file.
        """
        if not self.output_dir:
            return
        path = os.path.join(self.output_dir, RESULTS_FILE)
        record = {}
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    record = json.load(f)
            except (OSError, ValueError):
                record = {}  # a torn file from an older writer: rebuilt below, never trusted
        cfg = self.cfg
        record.update({
            "trainer": cfg.TRAINER.NAME, "dataset": cfg.DATASET.NAME, "seed": cfg.SEED,
            "backbone": cfg.MODEL.BACKBONE.NAME, "num_shots": cfg.DATASET.NUM_SHOTS,
            "subsample_classes": cfg.DATASET.SUBSAMPLE_CLASSES, "output_dir": self.output_dir,
            "epoch": getattr(self, "epoch", -1) + 1, "max_epoch": cfg.OPTIM.MAX_EPOCH,
            "eval_only": bool(getattr(self, "eval_only", False)),
            "parent_trainer": self.PARENT_TRAINER,
        })
        record.setdefault("results", {})[split] = {k: float(v) for k, v in results.items()}
        write_json_atomic(record, path)

    def gate_listener(self, name, output, cond, phase):
        """Handed to gated models: forwards each gate output to the gate_output hook."""
        self.call_hook("gate_output", name=name, output=output, cond=cond, phase=phase)

    # ------------------------------------------------------------ checkpoints
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
            raise ValueError(
                f"the checkpoint for '{name}' does not fit trainer {self.cfg.TRAINER.NAME} with "
                f"backbone {self.cfg.MODEL.BACKBONE.NAME} and {self.num_classes} classes "
                f"(missing: {missing}, unexpected: {unexpected}, shape mismatch: {wrong_shape}); "
                "was it made for another trainer, backbone, N_CTX or class count?"
            )
        module.load_state_dict(state_dict)


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
