"""What the diagnostics measure during one run, step by step and epoch by epoch.

`RunDiagnostics` is created for a run with gates and fed by the lifecycle hooks (see plugin.py),
through the run's HookContext. It only reads: gradients after backward, parameters around the optimizer step, gate
outputs as they are emitted (plus a tensor hook on each, which reads dL/dg and returns nothing),
and evaluations that run under `probes.quiet_probe`. Records are plain dicts written as JSON lines.
"""
import json
import math
import os

import torch

from gates.contract import apply_test_mode

from . import metrics, probes, report, study_metrics, study_outputs
from .study_probes import study_probes
from .verdict import DEFAULT_THRESHOLDS, decisions_changed, gate_verdict, loss_gain, probe_flags

MAX_OPTIONS_LISTED = 64  # per-option lists are kept in the step records up to this many options
OUTPUT_SAMPLE_PER_EPOCH = 4096  # gate values kept per gate and epoch for the distribution plot


def _rho(gate_stats, prompt_stats):
    return metrics.ratio(gate_stats.get("rms"), prompt_stats.get("rms"))


class GateTrack:
    """Per-gate running state: the training-set mean output and this epoch's samples."""

    def __init__(self, head):
        self.head = head
        self.name = head.name
        self.kind = head.kind
        self.sum = None
        self.count = 0
        self.choices, self.labels, self.domains = [], [], []
        self.sample = []
        self.sampled = 0
        self.train_mean = None  # the last finished epoch's mean output (K,)
        # A per-task gate's values at initialisation (K,): its first training output, taken before
        # any optimizer step; restored from epochs.jsonl after a resume, unknown in eval-only runs.
        self.init_output = None
        self.capture_init = False

    def start_epoch(self):
        self.sum, self.count = None, 0
        self.choices, self.labels, self.domains, self.sample = [], [], [], []
        self.sampled = 0  # gate values in self.sample

    def add(self, output, labels=None, domains=None):
        x = output.detach().to(torch.float64)
        if self.capture_init:
            self.init_output = x.mean(0).float().cpu()
            self.capture_init = False
        rows = x.sum(0)
        self.sum = rows if self.sum is None else self.sum + rows
        self.count += x.shape[0]
        if self.sampled < OUTPUT_SAMPLE_PER_EPOCH:
            self.sample.append(x.reshape(-1).float().cpu())
            self.sampled += x.numel()
        if labels is not None and self.head.input_dependent and x.shape[0] == labels.shape[0]:
            self.choices.append(metrics.choices_from_gate(x, self.kind).cpu())
            self.labels.append(labels.detach().cpu())
            if domains is not None:
                self.domains.append(torch.as_tensor(domains).detach().cpu())

    def finish_epoch(self, permutations=0):
        """The epoch's mean output, and MI(choice; label / domain) over its training batches: the
        plug-in value as `mi_label` / `mi_domain`, with its bias correction and permutation null as
        `mi_label_stats` / `mi_domain_stats` (metrics.mutual_information_test)."""
        if self.count:
            self.train_mean = (self.sum / self.count).float()
        result = {}
        if self.choices:
            choices = torch.cat(self.choices)
            stats = metrics.mutual_information_test(choices, torch.cat(self.labels), permutations)
            result["mi_label"], result["mi_label_stats"] = stats["plugin"], stats
            if self.domains:
                domains = torch.cat(self.domains)
                if domains.unique().numel() > 1:
                    stats = metrics.mutual_information_test(choices, domains, permutations)
                    result["mi_domain"], result["mi_domain_stats"] = stats["plugin"], stats
        return result


class LossMeans:
    """The training loss of an epoch, term by term: the mean over the epoch's finite steps of each
    named term (a term absent from a step counts 0 there, so the terms' means add up to the mean
    total). Summed on the loss's device, one small stack per step: no host sync per step."""

    def __init__(self):
        self.sums = {}  # {term names of a step (tuple): summed values (float64 vector)}
        self.steps = 0

    def add(self, losses):
        if not losses:
            return
        names = tuple(losses)
        values = torch.stack([v.detach().reshape(()).float() for v in losses.values()]).double()
        self.sums[names] = values if names not in self.sums else self.sums[names] + values
        self.steps += 1

    def result(self):
        """{"losses": {term: mean}, "train_loss": mean total} (None and {} before any step)."""
        if not self.steps:
            return {"losses": {}, "train_loss": None}
        means = {}
        for names, values in self.sums.items():
            for name, value in zip(names, values.tolist()):
                means[name] = means.get(name, 0.0) + value / self.steps
        return {"losses": means, "train_loss": sum(means.values())}


class RunDiagnostics:
    def __init__(self, context):
        # The run's gates.HookContext: it offers the trainer's names (epoch, model, loaders, ...),
        # so the code below reads it as it would read the trainer.
        self.trainer = trainer = context
        self.cfg = trainer.cfg.DIAGNOSTICS
        self.dir = os.path.join(trainer.output_dir or ".", "diagnostics")
        self.tracks = {head.name: GateTrack(head) for head in trainer.gate_heads}
        self.group_params = {g.get("name", f"group{i}"): [p for p in g["params"]]
                             for i, g in enumerate(trainer.optim.param_groups)}
        self.steps = []  # every logged step record (kept for the verdicts and the plots)
        self.epochs = []
        self.evaluations = []
        self.current = None
        self.before_step = None
        self.steps_written = 0
        self.global_step = 0
        # "gatescope" or "study" (declared in config.py, checked with the config)
        self.definitions = str(self.cfg.get("DEFINITIONS", "gatescope"))
        self.loss_means = LossMeans()
        study_outputs.check_metrics_file(trainer)

    # ------------------------------------------------------------------ lifecycle
    def before_train(self):
        os.makedirs(self.dir, exist_ok=True)
        start = getattr(self.trainer, "start_epoch", 0)
        # A resumed run keeps the history of the epochs its checkpoint covers, drops the rest.
        self.steps = [r for r in report.read_jsonl(os.path.join(self.dir, "steps.jsonl")) if r["epoch"] < start]
        self.epochs = [r for r in report.read_jsonl(os.path.join(self.dir, "epochs.jsonl")) if r["epoch"] < start]
        report.write_jsonl(os.path.join(self.dir, "steps.jsonl"), self.steps)
        report.write_jsonl(os.path.join(self.dir, "epochs.jsonl"), self.epochs)
        self.steps_written = len(self.steps)
        if start == 0:  # per-task gates: their values before the first step are the reference
            for track in self.tracks.values():
                track.capture_init = not track.head.input_dependent

    def state_dict(self):
        """What the files cannot give back at a resume, saved with every checkpoint: each gate's
        training-set mean of the last epoch (the counterfactual's constant) and its values at
        initialisation (per-task gates), the evaluations so far, and the class text features of the
        last evaluation (text_drift's reference). The step and epoch records are on disk before the
        checkpoint (after_epoch writes them)."""
        return {"evaluations": self.evaluations,
                "train_mean": {name: track.train_mean for name, track in self.tracks.items()
                               if track.train_mean is not None},
                "init_output": {name: track.init_output for name, track in self.tracks.items()
                                if track.init_output is not None},
                "last_class_text": getattr(self, "last_class_text", None)}

    def load_state_dict(self, state):
        """Restore `state_dict()` of the checkpoint being resumed (before before_train)."""
        self.evaluations = list(state.get("evaluations", []))
        for name, mean in state.get("train_mean", {}).items():
            if name in self.tracks:
                self.tracks[name].train_mean = mean
        for name, init in state.get("init_output", {}).items():
            if name in self.tracks:
                self.tracks[name].init_output = init
        self.last_class_text = state.get("last_class_text")

    def before_epoch(self):
        for track in self.tracks.values():
            track.start_epoch()
        self.loss_means = LossMeans()

    def logging_now(self):
        t = self.trainer
        if not getattr(t.model, "training", False) or not hasattr(t, "batch_idx"):
            return False
        self.global_step = t.epoch * t.num_batches + t.batch_idx
        return self.global_step % max(1, int(self.cfg.LOG_EVERY)) == 0

    def gate_output(self, name, output, cond):
        track = self.tracks.get(name)
        if track is None:
            return
        t = self.trainer
        track.add(output, getattr(t, "batch_labels", None), getattr(t, "batch_domains", None))
        if not self.logging_now():
            return
        record = metrics.gate_output_stats(output.detach(), track.kind, eps=float(self.cfg.EPS))
        if output.shape[1] > MAX_OPTIONS_LISTED:
            record.pop("per_option_mean")
            record.pop("per_option_std")
        if track.kind == "mask" and track.head.input_dependent:
            # The study's per-step figures, whatever the gate's size, on the batch-mean gate
            # (its CoCoOp's conditional gate); grad_norm is filled after the step.
            record["study"] = study_metrics.gate_step_figures(output.detach().mean(0), [])
        self.step_record()["gates"][name] = record
        if output.requires_grad:
            def read_grad(grad, record=record):
                record["dL_dg_rms"] = metrics.rms([grad])
                return None
            output.register_hook(read_grad)

    def step_record(self):
        """The record of the current (logged) step, started by its first measurement."""
        t = self.trainer
        if self.current is None or self.current["step"] != self.global_step:
            self.current = {"epoch": t.epoch, "batch": t.batch_idx, "step": self.global_step,
                            "groups": {}, "gates": {}}
        return self.current

    def after_backward(self):
        # Every finite step (a skipped one never reaches after_backward): the epoch's loss means.
        self.loss_means.add(getattr(self.trainer, "batch_losses", None))
        if not self.logging_now():
            return
        rec = self.step_record()
        for name, params in self.group_params.items():
            rec["groups"][name] = metrics.grad_stats([p.grad for p in params])
        prompt = rec["groups"].get("prompt", {})
        gate = rec["groups"].get("gate")
        if gate is not None:
            rec["rho"] = _rho(gate, prompt)
            rec["magnitude_gap"] = metrics.magnitude_gap(prompt.get("l2"), gate.get("l2"))
            underflow = metrics.fp16_underflow_of_stats(gate)
            if getattr(self.trainer, "prec", "fp32") not in ("fp16", "amp"):
                underflow["underflow"] = None  # fp32 gradients: tiny or zero entries are not underflow
            rec["fp16_underflow"] = underflow
        layers = getattr(self.trainer.model.prompt_learner, "deep_prompt_layers", None)
        if layers is not None:
            norms = [float(p.grad.detach().double().norm()) if p.grad is not None else None for p in layers()]
            rec["layer_l2"] = norms
            rec["layer_slope"] = metrics.layer_slope([n or 0.0 for n in norms])
        for name, track in self.tracks.items():
            g = rec["gates"].setdefault(name, {})
            params = [p for p in track.head.parameters() if p.requires_grad]
            if params:
                # A single gate holding the whole "gate" group: its figures are the group's.
                same = len(self.tracks) == 1 and len(params) == len(self.group_params.get("gate", ()))
                stats = gate if same and gate is not None else metrics.grad_stats([p.grad for p in params])
                g.update(grad_l2=stats["l2"], grad_rms=stats["rms"], grad_numel=stats["numel"], rho=_rho(stats, prompt),
                         magnitude_gap=metrics.magnitude_gap(prompt.get("l2"), stats["l2"]))
            logits = getattr(track.head.gate, "last_logits", None)
            if logits is not None:
                g["slope"] = metrics.activation_slope(logits, getattr(track.head.gate, "activation", None))
        self.before_step = {name: [p.detach().clone() for p in params] for name, params in self.group_params.items()}

    def after_step(self):
        if self.before_step is None or self.current is None:
            return
        for name, before in self.before_step.items():
            after = [p.detach() for p in self.group_params[name]]
            self.current["groups"][name]["update_rel"] = metrics.relative_update(before, after)
        self.record_received()
        self.before_step = None
        self.steps.append(self.current)
        self.current = None

    def record_received(self):
        """What the optimizer received, after every plugin's after_backward (remedies rescale or
        drop gradients there) and OPTIM.GRAD_CLIP (optimizer.step does not modify .grad): per group
        `received_rms` and `received_l2` (0.0 when no tensor of the group had a gradient, i.e. the
        group was frozen), and `rho_received` = received_rms(gate) / received_rms(prompt). The raw
        figures ("rms", "l2", "rho") are read in after_backward, before any remedy and the clip.

        With clipping on, `grad_clip` = {max_norm, total_norm (L2 of every gradient before the
        clip, after the remedies), coef = min(1, max_norm / (total_norm + 1e-6))}: a global clip
        multiplies every group by coef, so it changes the update sizes, not rho.

        Each mask gate also gets the study's per-step figures (`study`: d_eff, mean_p, std_p,
        entropy, grad_norm; study_metrics.gate_step_figures), whatever its number of options: for
        a per-task gate on its values after the step (as the study's CoOp reads them), for an
        input-dependent one on the step's batch-mean output; grad_norm from what it received."""
        received = {}
        for name, params in self.group_params.items():
            grads = [p.grad for p in params]
            numel = sum(g.numel() for g in grads if g is not None)
            rms = metrics.rms(grads) if numel else 0.0
            received[name] = rms
            group = self.current["groups"].setdefault(name, {})
            group["received_rms"] = rms
            group["received_l2"] = rms * math.sqrt(numel) if rms is not None else None
        if "gate" in received:
            self.current["rho_received"] = metrics.ratio(received["gate"], received.get("prompt"))
        clip = getattr(self.trainer, "last_grad_clip", None)
        if clip is not None:
            total = metrics.finite_or_none(clip["total_norm"])
            self.current["grad_clip"] = {"max_norm": clip["max_norm"], "total_norm": total,
                                         "coef": min(1.0, clip["max_norm"] / (total + 1e-6)) if total is not None else None}
        for name, track in self.tracks.items():
            if track.kind != "mask":
                continue
            grads = [p.grad for p in track.head.parameters() if p.requires_grad]
            g = self.current["gates"].setdefault(name, {})
            if track.head.input_dependent:
                if "study" in g:
                    g["study"]["grad_norm"] = study_metrics.gate_grad_norm(grads)
            else:
                g["study"] = study_metrics.gate_step_figures(task_gate_values(track.head), grads)

    def after_epoch(self):
        t = self.trainer
        record = {"epoch": t.epoch, "gates": {}}
        epoch_steps = [s for s in self.steps if s["epoch"] == t.epoch]
        for name, track in self.tracks.items():
            entry = track.finish_epoch(int(self.cfg.PERMUTATIONS))
            entry.update(self.window_figures(name, epoch_steps))
            if track.init_output is not None and track.init_output.numel() <= MAX_OPTIONS_LISTED:
                entry["init_output"] = track.init_output.tolist()
            if track.train_mean is not None:
                entry["train_mean"] = track.train_mean.tolist() if track.train_mean.numel() <= MAX_OPTIONS_LISTED else None
                if track.kind == "mask":
                    entry["pattern"] = metrics.pattern_stats(track.train_mean,
                                                             trend_min_range=float(self.cfg.TREND_MIN_RANGE))
            entry["output_sample"] = torch.cat(track.sample).tolist() if track.sample else []
            record["gates"][name] = entry
        record.update(self.loss_means.result())
        record["loss_weights"] = getattr(t, "loss_weights", {}) or {}
        record["val_acc"] = self.epoch_val_acc()
        if self.probe_epoch_now():
            record["probes"] = self.epoch_probes()
            if self.definitions == "study":
                record["study_probes"] = study_probes(t, [float(s) for s in self.cfg.NOISE_SIGMAS],
                                                      float(self.cfg.TREND_MIN_RANGE),
                                                      float(self.cfg.SENSITIVITY_MIN))
        self.epochs.append(record)
        study_outputs.write_metrics_file(t, self.epochs, self.steps)
        report.append_jsonl(os.path.join(self.dir, "steps.jsonl"), self.steps[self.steps_written:])
        self.steps_written = len(self.steps)
        report.append_jsonl(os.path.join(self.dir, "epochs.jsonl"), [record])
        report.write_scalars(t, record, epoch_steps)

    def probe_epoch_now(self):
        """Whether this epoch runs the probes: DIAGNOSTICS.PROBE_EPOCHS lists 1-based epoch numbers
        (gatescope), or the study's 0-based `self.epoch` values under DEFINITIONS study (its
        [1, 4, 9] are the 2nd, 5th and 10th epochs)."""
        number = self.trainer.epoch + (0 if self.definitions == "study" else 1)
        return number in [int(e) for e in self.cfg.PROBE_EPOCHS]

    def epoch_val_acc(self):
        """This epoch's validation accuracy (%): the trainer's own validation (TEST.FINAL_MODEL
        best_val), else, with DIAGNOSTICS.STUDY_METRICS_FILE, one pass over the validation set
        (the test set without one, as Dassl's test("val")) in eval mode under quiet_probe, as the
        study's trainers validate every epoch; else None."""
        t = self.trainer
        for entry in reversed(self.evaluations):
            if entry.get("epoch") == t.epoch and entry.get("split") == "val":
                return entry.get("acc")
        if not self.cfg.STUDY_METRICS_FILE:
            return None
        loader = t.val_loader if t.val_loader is not None else t.test_loader
        with probes.quiet_probe(t):
            return probes.evaluate(t, loader)

    def after_test(self, split, results):
        t = self.trainer
        loader = t.val_loader if split == "val" and t.val_loader is not None else t.test_loader
        entry = {"epoch": getattr(t, "epoch", 0), "split": split, "acc": results.get("accuracy"), "gates": {}}
        if self.cfg.EMBEDDING:
            entry["embedding"], self.last_class_text = probes.embedding_probe(
                t, loader, getattr(self, "last_class_text", None))
        # The training-set passes (counterfactual, linear probes, task gradient) cost about two
        # passes over the training set: done at test evaluations, not at every epoch's validation.
        on_train_set = split != "val"
        for name, track in self.tracks.items():
            entry["gates"][name] = self.functional_figures(track, loader, on_train_set)
        if on_train_set and int(self.cfg.GRAD_BATCHES) > 0 and getattr(t, "train_loader_x", None) is not None:
            split_grads = probes.task_gradient_probe(t, t.train_loader_x, [tr.head for tr in self.tracks.values()],
                                                     self.group_params.get("prompt", []), int(self.cfg.GRAD_BATCHES))
            for name, figures in split_grads.items():
                entry["gates"][name].update({k: metrics.median(v) for k, v in figures.items()})
        self.evaluations.append(entry)
        self.write_summary()

    def alternatives(self, track):
        """The altered gates each evaluation compares the learned one with, by name:
        input-dependent gate: "constant" (its training-set mean), "shuffled_cond" and "noise_cond";
        per-task gate: "init" (its initial values), "all_on" (the ungated model: every mask
        value 1, or the simplex one-hot on the last option, the full prompt by convention) and, for
        a mask gate, the study's fixed schedules "schedule_uniform", "schedule_full_on",
        "schedule_decay", "schedule_increase" (probes.fixed_schedules)."""
        head, out = track.head, {}

        def override(values):
            def configure(h):
                h.override = values.to(self.trainer.device)
            return configure

        def transform(function):
            def configure(h):
                h.cond_transform = function
            return configure

        if not head.input_dependent:
            # Compared as the model uses them: through GATE.TEST_MODE, like the learned values.
            num_options = track.init_output.numel() if track.init_output is not None else probes.gate_values(head).numel()
            if self.cfg.COUNTERFACTUAL and track.init_output is not None:
                out["init"] = override(apply_test_mode(track.init_output.view(1, -1), track.kind, head.test_mode,
                                                       head.threshold)[0])
            if self.cfg.COUNTERFACTUAL:
                on = torch.ones(num_options) if track.kind == "mask" else torch.nn.functional.one_hot(
                    torch.tensor(num_options - 1), num_options).float()
                out["all_on"] = override(on)
                if track.kind == "mask":  # the study's fixed schedules in place of the learned values
                    for name, values in probes.fixed_schedules(num_options).items():
                        out[f"schedule_{name}"] = override(apply_test_mode(values.view(1, -1), "mask",
                                                                           head.test_mode, head.threshold)[0])
            return out
        if self.cfg.COUNTERFACTUAL:
            mean = track.train_mean if track.train_mean is not None else self.mean_over_training_set(track)
            if mean is not None:
                out["constant"] = override(mean)
        if self.cfg.INPUT_TESTS:
            out["shuffled_cond"] = transform(probes.shuffled)
            out["noise_cond"] = transform(probes.same_moments_noise)
        return out

    def functional_figures(self, track, loader, on_train_set=True):
        """Everything an evaluation measures about one gate's function (see verdict.py for how the
        verdict reads it): the learned gate against each alternative on the evaluation set and,
        for the reference, on the training set; input dependence with call-to-call noise removed;
        MI of its choice with the label / domain against a permutation null; linear probes."""
        t, cfg, head = self.trainer, self.cfg, track.head
        alternatives = self.alternatives(track)
        if not alternatives:
            return {}
        resamples, permutations = int(cfg.BOOTSTRAP), int(cfg.PERMUTATIONS)
        reference = "constant" if head.input_dependent else "init"
        test = probes.functional_pass(t, loader, head, alternatives)
        functional = {"test": {n: metrics.summarise_change(c, resamples) for n, c in test["changes"].items()}}
        if test["repeat"] is not None:
            functional["test"]["repeat"] = metrics.summarise_change(test["repeat"], resamples)
        train = None
        train_loader = getattr(t, "train_loader_x", None)
        if on_train_set and cfg.TRAIN_SET and train_loader is not None:
            kept = {n: a for n, a in alternatives.items() if n in (reference, "all_on")}
            train = probes.functional_pass(t, train_loader, head, kept, int(cfg.TRAIN_BATCHES))
            functional["train"] = {n: metrics.summarise_change(c, resamples) for n, c in train["changes"].items()}
        g = {"reference": reference, "functional": functional}
        ref = functional["test"].get(reference)
        if ref is not None and ref["n"]:
            repeat_kl = test["repeat"]["kl"] if test["repeat"] is not None else None
            effect = metrics.functional_effect(test["changes"][reference]["kl"], repeat_kl, resamples)
            g.update(kl_reference=ref["kl"], delta_acc=ref["acc_delta"],
                     kl_repeat=functional["test"]["repeat"]["kl"] if test["repeat"] is not None else 0.0,
                     kl_effect=effect["effect"], kl_effect_low=effect["effect_low"])
            if reference == "constant":
                g["acc_constant_gate"] = ref["acc_other"]
        for name, key in (("shuffled_cond", "acc_shuffled_cond"), ("noise_cond", "acc_noise_cond")):
            if name in functional["test"]:
                g[key] = functional["test"][name]["acc_other"]
        if not head.input_dependent:
            if "all_on" in functional["test"]:
                g["kl_all_on"] = functional["test"]["all_on"]["kl"]
            schedules = {n[len("schedule_"):]: c["kl"] for n, c in functional["test"].items() if n.startswith("schedule_")}
            if schedules:
                g["kl_schedules"] = schedules
            values = probes.gate_values(head)
            g["values"] = values.tolist() if values.numel() <= MAX_OPTIONS_LISTED else None
            if track.init_output is not None:
                g["moved"] = float((values - track.init_output).abs().max()) if values.numel() else 0.0
            return g
        gate, labels = test["gate"], test["labels"]
        if gate is None or gate.shape[0] != labels.shape[0]:
            return g
        g.update(metrics.input_dependence(gate, test["gate_repeat"], resamples))
        g["eval_input_std"] = g.pop("input_std")
        choices = metrics.choices_from_gate(gate, track.kind)
        g["choice_top_share"] = metrics.choice_top_share(choices)
        g["mi"] = {"label": metrics.mutual_information_test(choices, labels, permutations)}
        domains = test["domains"]
        if domains is not None and domains.unique().numel() > 1:
            g["mi"]["domain"] = metrics.mutual_information_test(choices, domains, permutations)
        if train is not None and train["gate"] is not None and train["gate"].shape[0] == train["labels"].shape[0]:
            g["linear_probe"] = self.linear_probes(train, test)
        return g

    @staticmethod
    def linear_probes(train, test):
        """Held-out accuracy of linear probes to the label (and the domain, when the data records
        more than one) from the gate's conditioning and from the gate's output."""
        probes_out = {}
        targets = {"label": (train["labels"], test["labels"])}
        if train["domains"] is not None and test["domains"] is not None and train["domains"].unique().numel() > 1:
            targets["domain"] = (train["domains"], test["domains"])
        for source in ("cond", "gate"):
            for target, (y_train, y_test) in targets.items():
                probes_out[f"{source}_{target}"] = metrics.linear_probe(train[source], y_train, test[source], y_test)
        return probes_out

    def flush(self, reason=None):
        """Write everything measured so far (steps, the unfinished step, the summary) now: the
        run is stopping (on_abort). `reason` goes into summary.json as "aborted"."""
        os.makedirs(self.dir, exist_ok=True)
        if self.current is not None and (not self.steps or self.steps[-1] is not self.current):
            self.steps.append(self.current)  # the step that failed: its gate figures say most
            self.current = None
        report.append_jsonl(os.path.join(self.dir, "steps.jsonl"), self.steps[self.steps_written:])
        self.steps_written = len(self.steps)
        summary = self.summary()
        summary["aborted"] = reason
        report.write_json(os.path.join(self.dir, "summary.json"), summary)
        return summary

    def after_train(self):
        report.append_jsonl(os.path.join(self.dir, "steps.jsonl"), self.steps[self.steps_written:])
        self.steps_written = len(self.steps)
        summary = self.write_summary()
        if self.cfg.PLOTS:
            report.plot_grad_norms(self.steps, os.path.join(self.dir, "grad_norms.png"))
            report.plot_gate_outputs(self.epochs, os.path.join(self.dir, "gate_outputs.png"))
        print(report.summary_table(summary))

    # ------------------------------------------------------------------ figures
    def window_figures(self, name, steps):
        """Medians over `steps` of the per-gate figures the verdict reads."""
        rows = [s["gates"].get(name, {}) for s in steps]
        keys = ("rho", "magnitude_gap", "input_std", "saturation", "usage_entropy", "effective_options",
                "effective_length", "binary_entropy", "sample_entropy", "top_share", "slope", "dL_dg_rms", "grad_rms")
        return {f"{k}_median" if k in ("rho", "magnitude_gap") else k: metrics.median(r.get(k) for r in rows)
                for k in keys}

    def mean_over_training_set(self, track):
        """For an evaluation without training (eval-only): the gate's mean over the training set."""
        t = self.trainer
        loader = getattr(t, "train_loader_x", None)
        if loader is None:
            return None
        outputs = []
        with probes.quiet_probe(t):
            t.model.eval()
            track.head.listener = lambda name, output, cond, phase: outputs.append(output.detach().float())
            with torch.no_grad():
                for batch in loader:
                    image, _ = t.parse_batch_train(batch)
                    t.model_inference(image)
        if not outputs:
            return None
        track.train_mean = torch.cat([o.reshape(-1, o.shape[-1]) for o in outputs]).mean(0)
        return track.train_mean

    def epoch_probes(self):
        t = self.trainer
        out = {}
        n = int(self.cfg.PROBE_BATCHES)
        for name, track in self.tracks.items():
            p = {}
            if track.kind == "mask" and track.head.last_output is not None:
                eff = metrics.median(s["gates"].get(name, {}).get("effective_length")
                                     for s in self.steps if s["epoch"] == t.epoch)
                p["schedules"] = probes.schedule_probes(t, t.test_loader, track.head, eff or 0.0, n)
            p["sensitivity"] = probes.sensitivity_probe(t, t.test_loader, track.head, list(self.cfg.NOISE_SIGMAS), n)
            out[name] = p
        with probes.quiet_probe(t):  # creating the loader's iterator draws from the RNG
            batch = next(iter(t.train_loader_x), None)
            competition = probes.loss_competition_probe(t, batch) if batch is not None else {}
        for name, figures in competition.items():
            out.setdefault(name, {})["loss_competition"] = figures
        return out

    def summary(self):
        t = self.trainer
        cfg = t.cfg
        th = {k: cfg.DIAGNOSTICS[k] for k in DEFAULT_THRESHOLDS}
        window = metrics.tail(self.steps, float(cfg.DIAGNOSTICS.WINDOW))
        last_eval = self.evaluations[-1] if self.evaluations else {"gates": {}}
        gates = {}
        last_study = next(((e["epoch"], e["study_probes"]) for e in reversed(self.epochs) if "study_probes" in e), None)
        for name, track in self.tracks.items():
            fig = self.window_figures(name, window)
            last_epoch = next((e["gates"].get(name, {}) for e in reversed(self.epochs)), {})
            gate = {
                "gate": track.head.gate_name, "kind": track.kind,
                "input_dependent": bool(getattr(track.head.gate, "input_dependent", True)),
                "no_task_grad_params": list(getattr(track.head.gate, "no_task_grad_params", ())),
                # Training figures: medians over the last WINDOW of the logged steps (every loss term).
                "rho_median": fig["rho_median"], "input_std": fig["input_std"], "saturation": fig["saturation"],
                "usage_entropy": fig["usage_entropy"], "effective_options": fig["effective_options"],
                "top_share": fig["top_share"], "magnitude_gap": fig["magnitude_gap_median"],
                "effective_length": fig["effective_length"], "slope": fig["slope"], "dL_dg_rms": fig["dL_dg_rms"],
                "mi_label": last_epoch.get("mi_label"), "mi_domain": last_epoch.get("mi_domain"),
                "mi_label_train": last_epoch.get("mi_label_stats"), "mi_domain_train": last_epoch.get("mi_domain_stats"),
                "init_values": track.init_output.tolist() if track.init_output is not None
                and track.init_output.numel() <= MAX_OPTIONS_LISTED else None,
                "acc": last_eval.get("acc"),
            }
            for key in ("acc_constant_gate", "delta_acc", "acc_shuffled_cond", "acc_noise_cond"):
                gate[key] = None
            # Evaluation figures (the last evaluation): function, input dependence, task gradient.
            gate.update(last_eval["gates"].get(name, {}))
            gate.update(self.gap_sizes(name, window))
            gate.update(self.probe_figures(name, th))
            if last_study is not None:
                gate.update(study_gap_figures(last_study[1]))
            gate["decisions_changed"] = decisions_changed(gate)[0]
            gate["loss_gain"] = loss_gain(gate)[0]
            gate["verdict"], gate["reasons"] = gate_verdict(gate, th)
            gates[name] = gate
        underflow = [u for u in (s.get("fp16_underflow", {}).get("underflow") for s in window) if u is not None]
        return {
            "config_name": os.path.splitext(os.path.basename(cfg.get("CONFIG_FILE", "")))[0], "trainer": cfg.TRAINER.NAME, "dataset": cfg.DATASET.NAME,
            "seed": cfg.SEED, "output_dir": t.output_dir, "steps_logged": len(self.steps),
            "epochs": len(self.epochs), "thresholds": th, "gates": gates,
            "layer_slope": metrics.median(s.get("layer_slope") for s in window),
            "embedding": last_eval.get("embedding"),
            "fp16_underflow_share": (sum(bool(u) for u in underflow) / len(underflow)) if underflow else None,
            "nonfinite_skips": int(getattr(t, "nonfinite_skips", 0)),
            "grad_clip": grad_clip_summary(window),
            "definitions": self.definitions,
            "study_probes": {"epoch": last_study[0], **last_study[1]} if last_study is not None else None,
            "evaluations": self.evaluations,
        }

    def probe_figures(self, name, thresholds):
        """From the last epoch with probes (DIAGNOSTICS.PROBE_EPOCHS): the noise test's
        sensitivity_max, schedule_gain = learned accuracy minus the best of the fixed schedules
        and the random gate of the same effective length (schedule_best names it), and `probes`:
        that epoch's probe results with the study's flags (verdict.probe_flags) and the gate's
        pattern of that epoch."""
        last = next((e for e in reversed(self.epochs) if name in e.get("probes", {})), None)
        if not last:
            return {}
        record = last["probes"][name]
        out = {"sensitivity_max": (record.get("sensitivity") or {}).get("max")}
        flagged = probe_flags(record, thresholds)
        schedules = flagged.get("schedules") or {}
        if schedules.get("gain") is not None:
            out.update(schedule_gain=schedules["gain"], schedule_best=schedules["best"])
        pattern = last["gates"].get(name, {}).get("pattern")
        out["probes"] = {"epoch": last["epoch"], **flagged, **({"pattern": pattern} if pattern else {})}
        return out

    def gap_sizes(self, name, steps):
        """The sizes behind the per-step magnitude_gap, from the last logged step that has them:
        gap_prompt_numel (the "prompt" group's values) and gap_gate_numel (this gate's)."""
        for s in reversed(steps):
            n_gate = s["gates"].get(name, {}).get("grad_numel")
            n_prompt = s.get("groups", {}).get("prompt", {}).get("numel")
            if n_gate and n_prompt:
                return {"gap_prompt_numel": n_prompt, "gap_gate_numel": n_gate}
        return {}

    def write_summary(self):
        summary = self.summary()
        report.write_json(os.path.join(self.dir, "summary.json"), summary)
        return summary


def task_gate_values(head):
    """A per-task gate's values now (K,): sigmoid of its logits for a sigmoid gate with free
    logits (the study's gates; no forward needed at every logged step), else probes.gate_values."""
    logits = getattr(head.gate, "logits", None)
    if isinstance(logits, torch.Tensor) and logits.dim() == 1 and getattr(head.gate, "activation", None) == "sigmoid":
        return torch.sigmoid(logits.detach())
    return probes.gate_values(head)


def study_gap_figures(study):
    """The study's gradient gap (A1 of DIAGNOSTICS.DEFINITIONS study, all gates together) as gate
    figures for the verdict's reasons: study_magnitude_gap, study_gap_rho and the group sizes."""
    a1 = study.get("A1_gradient_ratio") or {}
    if a1.get("magnitude_gap") is None:
        return {}
    return {"study_magnitude_gap": a1["magnitude_gap"], "study_gap_rho": a1.get("rho"),
            "study_gap_prompt_numel": a1.get("prompt_numel"), "study_gap_gate_numel": a1.get("gate_numel")}


def grad_clip_summary(steps):
    """OPTIM.GRAD_CLIP over `steps`: max_norm, the median pre-clip total norm and clip coefficient,
    and clipped_share, the share of steps whose gradients were scaled down (coef < 1). None when
    clipping was off."""
    clips = [s["grad_clip"] for s in steps if s.get("grad_clip")]
    if not clips:
        return None
    coefs = [c["coef"] for c in clips if c.get("coef") is not None]
    return {"max_norm": clips[-1]["max_norm"], "total_norm_median": metrics.median(c.get("total_norm") for c in clips),
            "coef_median": metrics.median(coefs),
            "clipped_share": sum(c < 1.0 for c in coefs) / len(coefs) if coefs else None}


def load_summary(output_dir):
    with open(os.path.join(output_dir, "diagnostics", "summary.json"), encoding="utf-8") as f:
        return json.load(f)
