"""What the diagnostics measure during one run, step by step and epoch by epoch.

`RunDiagnostics` is created for a run with gates and fed by the lifecycle hooks (see plugin.py),
through the run's HookContext. It only reads: gradients after backward, parameters around the optimizer step, gate
outputs as they are emitted (plus a tensor hook on each, which reads dL/dg and returns nothing),
and evaluations that run under `probes.quiet_probe`. Records are plain dicts written as JSON lines.
"""
import json
import os

import torch

from . import metrics, probes, report
from .verdict import gate_verdict

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
        self.train_mean = None  # the last finished epoch's mean output (K,)

    def start_epoch(self):
        self.sum, self.count = None, 0
        self.choices, self.labels, self.domains, self.sample = [], [], [], []

    def add(self, output, labels=None, domains=None):
        x = output.detach().to(torch.float64)
        rows = x.sum(0)
        self.sum = rows if self.sum is None else self.sum + rows
        self.count += x.shape[0]
        if sum(s.numel() for s in self.sample) < OUTPUT_SAMPLE_PER_EPOCH:
            self.sample.append(x.reshape(-1).float().cpu())
        if labels is not None and self.head.input_dependent and x.shape[0] == labels.shape[0]:
            self.choices.append(metrics.choices_from_gate(x, self.kind).cpu())
            self.labels.append(labels.detach().cpu())
            if domains is not None:
                self.domains.append(torch.as_tensor(domains).detach().cpu())

    def finish_epoch(self):
        if self.count:
            self.train_mean = (self.sum / self.count).float()
        result = {}
        if self.choices:
            choices = torch.cat(self.choices)
            result["mi_label"] = metrics.mutual_information(choices, torch.cat(self.labels))
            if self.domains:
                domains = torch.cat(self.domains)
                if domains.unique().numel() > 1:
                    result["mi_domain"] = metrics.mutual_information(choices, domains)
        return result


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

    def state_dict(self):
        """What the files cannot give back at a resume, saved with every checkpoint: each gate's
        training-set mean of the last epoch (the counterfactual's constant), the evaluations so
        far, and the class text features of the last evaluation (text_drift's reference). The
        step and epoch records are on disk before the checkpoint (after_epoch writes them)."""
        return {"evaluations": self.evaluations,
                "train_mean": {name: track.train_mean for name, track in self.tracks.items()
                               if track.train_mean is not None},
                "last_class_text": getattr(self, "last_class_text", None)}

    def load_state_dict(self, state):
        """Restore `state_dict()` of the checkpoint being resumed (before before_train)."""
        self.evaluations = list(state.get("evaluations", []))
        for name, mean in state.get("train_mean", {}).items():
            if name in self.tracks:
                self.tracks[name].train_mean = mean
        self.last_class_text = state.get("last_class_text")

    def before_epoch(self):
        for track in self.tracks.values():
            track.start_epoch()

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
            underflow = metrics.fp16_underflow([p.grad for p in self.group_params["gate"]])
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
                g.update(grad_l2=stats["l2"], grad_rms=stats["rms"], rho=_rho(stats, prompt),
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
        drop gradients there; optimizer.step does not modify .grad): per group `received_rms`
        (0.0 when no tensor of the group had a gradient, i.e. the group was frozen), and
        `rho_received` = received_rms(gate) / received_rms(prompt). The raw figures ("rms",
        "rho") are read in after_backward, before any remedy."""
        received = {}
        for name, params in self.group_params.items():
            grads = [p.grad for p in params]
            rms = metrics.rms(grads) if any(g is not None for g in grads) else 0.0
            received[name] = rms
            self.current["groups"].setdefault(name, {})["received_rms"] = rms
        if "gate" in received:
            self.current["rho_received"] = metrics.ratio(received["gate"], received.get("prompt"))

    def after_epoch(self):
        t = self.trainer
        record = {"epoch": t.epoch, "gates": {}}
        epoch_steps = [s for s in self.steps if s["epoch"] == t.epoch]
        for name, track in self.tracks.items():
            entry = track.finish_epoch()
            entry.update(self.window_figures(name, epoch_steps))
            if track.train_mean is not None:
                entry["train_mean"] = track.train_mean.tolist() if track.train_mean.numel() <= MAX_OPTIONS_LISTED else None
                if track.kind == "mask":
                    entry["pattern"] = metrics.pattern_stats(track.train_mean)
            entry["output_sample"] = torch.cat(track.sample).tolist() if track.sample else []
            record["gates"][name] = entry
        if (t.epoch + 1) in [int(e) for e in self.cfg.PROBE_EPOCHS]:
            record["probes"] = self.epoch_probes()
        self.epochs.append(record)
        report.append_jsonl(os.path.join(self.dir, "steps.jsonl"), self.steps[self.steps_written:])
        self.steps_written = len(self.steps)
        report.append_jsonl(os.path.join(self.dir, "epochs.jsonl"), [record])
        report.write_scalars(t, record, epoch_steps)

    def after_test(self, split, results):
        t = self.trainer
        loader = t.val_loader if split == "val" and t.val_loader is not None else t.test_loader
        entry = {"epoch": getattr(t, "epoch", 0), "split": split, "acc": results.get("accuracy"), "gates": {}}
        if self.cfg.EMBEDDING:
            entry["embedding"], self.last_class_text = probes.embedding_probe(
                t, loader, getattr(self, "last_class_text", None))
        for name, track in self.tracks.items():
            g = {}
            if self.cfg.COUNTERFACTUAL:
                mean = track.train_mean if track.train_mean is not None else self.mean_over_training_set(track)
                if mean is not None:
                    g["acc_constant_gate"] = probes.counterfactual(t, loader, track.head, mean)
                    if entry["acc"] is not None and g["acc_constant_gate"] is not None:
                        g["delta_acc"] = entry["acc"] - g["acc_constant_gate"]
            if self.cfg.INPUT_TESTS and getattr(track.head.gate, "input_dependent", True):
                g.update(probes.input_tests(t, loader, track.head))
            entry["gates"][name] = g
        self.evaluations.append(entry)
        self.write_summary()

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
        th = {k: cfg.DIAGNOSTICS[k] for k in ("RHO_MIN", "STD_MIN", "SAT_MAX", "EFF_MIN", "DELTA_MIN", "WINDOW")}
        window = metrics.tail(self.steps, float(cfg.DIAGNOSTICS.WINDOW))
        last_eval = self.evaluations[-1] if self.evaluations else {"gates": {}}
        gates = {}
        for name, track in self.tracks.items():
            fig = self.window_figures(name, window)
            ev = last_eval["gates"].get(name, {})
            no_task_grad = bool(getattr(track.head.gate, "no_task_grad_params", ()))
            input_dependent = bool(getattr(track.head.gate, "input_dependent", True))
            verdict, reasons = gate_verdict(fig["rho_median"], fig["input_std"], fig["saturation"],
                                            fig["effective_options"], ev.get("delta_acc"), input_dependent, th,
                                            kind=track.kind, no_task_grad=no_task_grad)
            last_epoch = next((e["gates"].get(name, {}) for e in reversed(self.epochs)), {})
            gates[name] = {
                "gate": track.head.gate_name, "kind": track.kind, "input_dependent": input_dependent,
                "verdict": verdict, "reasons": reasons,
                "rho_median": fig["rho_median"], "input_std": fig["input_std"], "saturation": fig["saturation"],
                "usage_entropy": fig["usage_entropy"], "effective_options": fig["effective_options"],
                "top_share": fig["top_share"],
                "magnitude_gap": fig["magnitude_gap_median"],
                "effective_length": fig["effective_length"], "slope": fig["slope"], "dL_dg_rms": fig["dL_dg_rms"],
                "acc": last_eval.get("acc"), "acc_constant_gate": ev.get("acc_constant_gate"),
                "delta_acc": ev.get("delta_acc"), "acc_shuffled_cond": ev.get("acc_shuffled_cond"),
                "acc_noise_cond": ev.get("acc_noise_cond"),
                "mi_label": last_epoch.get("mi_label"), "mi_domain": last_epoch.get("mi_domain"),
                "no_task_grad_params": list(getattr(track.head.gate, "no_task_grad_params", ())),
            }
        underflow = [u for u in (s.get("fp16_underflow", {}).get("underflow") for s in window) if u is not None]
        return {
            "config_name": os.path.splitext(os.path.basename(cfg.get("CONFIG_FILE", "")))[0], "trainer": cfg.TRAINER.NAME, "dataset": cfg.DATASET.NAME,
            "seed": cfg.SEED, "output_dir": t.output_dir, "steps_logged": len(self.steps),
            "epochs": len(self.epochs), "thresholds": th, "gates": gates,
            "layer_slope": metrics.median(s.get("layer_slope") for s in window),
            "embedding": last_eval.get("embedding"),
            "fp16_underflow_share": (sum(bool(u) for u in underflow) / len(underflow)) if underflow else None,
            "nonfinite_skips": int(getattr(t, "nonfinite_skips", 0)),
            "evaluations": self.evaluations,
        }

    def write_summary(self):
        summary = self.summary()
        report.write_json(os.path.join(self.dir, "summary.json"), summary)
        return summary


def load_summary(output_dir):
    with open(os.path.join(output_dir, "diagnostics", "summary.json"), encoding="utf-8") as f:
        return json.load(f)
