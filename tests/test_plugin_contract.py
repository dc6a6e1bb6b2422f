"""The plugin contract: the hook order hookspecs.py documents, the context, checkpointed plugin
state, the end of a run on any exception, and the packages' import structure."""
import ast
import gc
import importlib.util
import json
import os
import re
import signal

import pytest
import torch

from conftest import REPO, build_demo_trainer
from gates import HookContext, hookimpl, hookspecs
from gates.manager import PluginError
from trainers.plugins import load_plugins

# 20 training images in batches of 8: 3 steps per epoch; val every epoch (best_val) and a final
# test, every epoch checkpointed; the diagnostics' probes off (speed; they are tested elsewhere).
OPTS = ("DATASET.NUM_SHOTS", 2, "DATALOADER.TRAIN_X.BATCH_SIZE", 8, "OPTIM.MAX_EPOCH", 2,
        "TEST.FINAL_MODEL", "best_val", "TRAIN.CHECKPOINT_FREQ", 1, "DIAGNOSTICS.PLOTS", False,
        "DIAGNOSTICS.COUNTERFACTUAL", False, "DIAGNOSTICS.INPUT_TESTS", False, "DIAGNOSTICS.EMBEDDING", False,
        "DIAGNOSTICS.GRAD_BATCHES", 0)
LIFECYCLE = ("load_state_dict", "before_train", "before_epoch", "gate_output", "gatescope_gate_losses",
             "after_backward", "after_step", "after_test", "after_epoch", "state_dict", "on_abort", "after_train")


class CallLog:
    """Records every lifecycle hook as it is called (training-phase gate outputs only)."""

    def __init__(self, fail_at=None):
        self.calls = []
        self.fail_at = fail_at  # (hook, n): raise that exception at the n-th call of hook
        self.context_ids = set()
        self.errors = []

    def record(self, name, context):
        self.calls.append(name)
        self.context_ids.add(id(context))
        if self.fail_at and self.fail_at[0] == name and self.calls.count(name) == self.fail_at[1]:
            raise self.fail_at[2]()

    @hookimpl
    def load_state_dict(self, context, state):
        assert state == {"calls_so_far": state["calls_so_far"]}
        self.record("load_state_dict", context)

    @hookimpl
    def before_train(self, context):
        self.record("before_train", context)

    @hookimpl
    def before_epoch(self, context):
        self.record("before_epoch", context)

    @hookimpl
    def gate_output(self, context, name, output, cond, phase):
        if phase == "train":
            self.record("gate_output", context)

    @hookimpl
    def gatescope_gate_losses(self, context):
        self.record("gatescope_gate_losses", context)

    @hookimpl
    def after_backward(self, context):
        self.record("after_backward", context)

    @hookimpl
    def after_step(self, context):
        self.record("after_step", context)

    @hookimpl
    def after_test(self, context, split, results):
        self.record("after_test", context)

    @hookimpl
    def after_epoch(self, context):
        self.record("after_epoch", context)

    @hookimpl
    def state_dict(self, context):
        self.record("state_dict", context)
        return {"calls_so_far": len(self.calls)}

    @hookimpl
    def on_abort(self, context, error):
        self.errors.append(error)
        self.record("on_abort", context)

    @hookimpl
    def after_train(self, context):
        self.errors.append(context.error)
        self.record("after_train", context)


def documented_order(epochs, batches, holds):
    """The hook calls hookspecs' docstring documents for a run of `epochs` x `batches`, with the
    conditions in `holds` true ("# if <condition>" comments); each call listed once per place."""
    block = hookspecs.__doc__.split("in this order:\n\n", 1)[1].split("\n\n", 1)[0]
    lines = [(len(line) - len(line.lstrip()), line.strip()) for line in block.splitlines() if line.strip()]

    def expand(start, indent):
        out, i = [], start
        while i < len(lines) and lines[i][0] >= indent:
            level, text = lines[i]
            loop = re.match(r"for each (\w+):", text)
            if loop:
                body, i = expand(i + 1, level + 1)
                out += body * {"epoch": epochs, "batch": batches}[loop.group(1)]
                continue
            condition = re.search(r"#\s*if (\w+)", text)
            if condition is None or condition.group(1) in holds:
                out.append(text.split("(", 1)[0])
            i += 1
        return out, i
    return expand(0, lines[0][0])[0]


def collapsed(calls):
    """Consecutive repeats as one (a hook called once per gate, or per checkpoint file written)."""
    return [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c]


def run_with(plugin, demo_root, out, trainer="CoOpGated", opts=OPTS, monkeypatch=None):
    plugins = load_plugins(autoload=False)
    plugins.register(plugin, "call-log", "call-log-dist", "1.0")
    monkeypatch.setattr("trainers.plugins._MANAGER", plugins)
    trainer = build_demo_trainer(demo_root, out, trainer=trainer, opts=opts)
    return trainer


def test_hookspecs_document_every_hook_in_the_order_a_run_calls_them(demo_root, tmp_path, monkeypatch):
    documented = set(documented_order(1, 1, {"resuming", "gated", "validating", "checkpointing", "testing",
                                             "stopping"}))
    assert documented == set(LIFECYCLE), "hookspecs.py's order lists other hooks than the lifecycle specs"
    specs = {name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "gatescope_spec")}
    assert set(LIFECYCLE) <= specs

    # A fresh run: 2 epochs of 3 batches, validated and checkpointed every epoch, a final test.
    log = CallLog()
    trainer = run_with(log, demo_root, tmp_path, monkeypatch=monkeypatch)
    trainer.train()
    assert collapsed(log.calls) == collapsed(documented_order(
        2, trainer.num_batches, {"gated", "validating", "checkpointing", "testing"}))
    assert len(log.context_ids) == 1 and log.errors == [None]

    # Resumed for one more epoch: the plugin's state comes back before before_train.
    log = CallLog()
    resumed = run_with(log, demo_root, tmp_path, opts=OPTS + ("OPTIM.MAX_EPOCH", 3), monkeypatch=monkeypatch)
    resumed.train()
    assert resumed.start_epoch == 2
    assert collapsed(log.calls) == collapsed(documented_order(
        1, resumed.num_batches, {"resuming", "gated", "validating", "checkpointing", "testing"}))

    # Stopped by an exception at the second step: on_abort, then after_train, nothing else.
    log = CallLog(fail_at=("after_step", 2, lambda: RuntimeError("boom")))
    stopped = run_with(log, demo_root, tmp_path / "stopped", monkeypatch=monkeypatch)
    with pytest.raises(PluginError, match="call-log.*after_step.*boom"):
        stopped.train()
    documented = documented_order(1, 2, {"gated", "stopping"})
    second_step = [i for i, call in enumerate(documented) if call == "after_step"][1]
    assert collapsed(log.calls) == collapsed(documented[:second_step + 1] + documented[-2:])
    assert documented[-2:] == ["on_abort", "after_train"]
    assert isinstance(log.errors[0], PluginError) and log.errors[1] is log.errors[0]


class Interrupter:
    """Stops the run in the first step of epoch 2 the way `kind` does."""

    def __init__(self, kind):
        self.kind = kind

    @hookimpl
    def after_step(self, context):
        if context.epoch == 1 and context.batch_idx == 0:
            if self.kind == "KeyboardInterrupt":
                raise KeyboardInterrupt
            if self.kind == "SIGTERM":
                os.kill(os.getpid(), signal.SIGTERM)
            if self.kind == "RuntimeError":
                raise RuntimeError("a logger lost its file")
            if self.kind == "NonFiniteError":
                for group in context.param_groups:  # a NaN gradient on the next step
                    group["params"][0].register_hook(lambda grad: grad * float("nan"))


@pytest.mark.parametrize("kind,error,reason", [
    ("KeyboardInterrupt", KeyboardInterrupt, "KeyboardInterrupt"),
    ("SIGTERM", KeyboardInterrupt, "SignalInterrupt: SIGTERM received"),
    ("RuntimeError", PluginError, "PluginError: plugin 'interrupter'"),
    ("NonFiniteError", FloatingPointError, "NonFiniteError: Non-finite values in parameter group"),
])
def test_any_exception_writes_the_diagnostics_closes_the_writer_and_leaves_a_resumable_run(
        demo_root, tmp_path, monkeypatch, kind, error, reason):
    opts = OPTS + ("TEST.FINAL_MODEL", "last_step")
    straight = build_demo_trainer(demo_root, tmp_path / "straight", trainer="CoOpGated", opts=opts)
    straight.train()

    plugins = load_plugins(autoload=False)
    plugins.register(Interrupter(kind), "interrupter", "interrupter-dist", "1.0")
    monkeypatch.setattr("trainers.plugins._MANAGER", plugins)
    run = build_demo_trainer(demo_root, tmp_path / "run", trainer="CoOpGated", opts=opts)
    previous_handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(error):
        run.train()
    assert signal.getsignal(signal.SIGTERM) is previous_handler  # the handler is the run's only
    assert run._writer is None  # TensorBoard closed
    diagnostics = tmp_path / "run" / "diagnostics"
    summary = json.loads((diagnostics / "summary.json").read_text())
    assert summary["aborted"].startswith(reason), summary["aborted"]
    steps = [json.loads(line) for line in open(diagnostics / "steps.jsonl")]
    assert steps[-1]["epoch"] == 1  # what epoch 2 measured before the stop is on disk
    folder = tmp_path / "run" / "prompt_learner"
    assert (folder / "model.pth.tar-1").exists() and not (folder / "model.pth.tar-2").exists()

    monkeypatch.undo()  # the cause is gone: the same command resumes and ends as if never stopped
    resumed = build_demo_trainer(demo_root, tmp_path / "run", trainer="CoOpGated", opts=opts)
    resumed.train()
    assert resumed.start_epoch == 1
    for a, b in zip(resumed.model.prompt_learner.parameters(), straight.model.prompt_learner.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for name in ("steps.jsonl", "epochs.jsonl"):
        assert (diagnostics / name).read_text() == (tmp_path / "straight" / "diagnostics" / name).read_text()
    assert "aborted" not in json.loads((diagnostics / "summary.json").read_text())


def test_plugin_state_travels_with_the_checkpoint_and_must_be_loadable(demo_root, tmp_path, monkeypatch):
    class Counter:
        def __init__(self, state=None):
            self.steps = 0
            self.restored = None
            self.state = state

        @hookimpl
        def after_step(self, context):
            self.steps += 1

        @hookimpl
        def state_dict(self, context):
            return self.state if self.state is not None else {"steps": self.steps, "mean": torch.ones(2)}

        @hookimpl
        def load_state_dict(self, context, state):
            self.restored = state

    opts = OPTS + ("OPTIM.MAX_EPOCH", 1, "TEST.NO_TEST", True)
    counter = Counter()
    run_with(counter, demo_root, tmp_path / "a", trainer="CoOp", opts=opts, monkeypatch=monkeypatch).train()
    saved = torch.load(tmp_path / "a" / "prompt_learner" / "model.pth.tar-1", weights_only=True)["plugins"]
    assert saved["call-log"]["steps"] == counter.steps > 0
    again = Counter()
    run_with(again, demo_root, tmp_path / "a", trainer="CoOp", opts=opts + ("OPTIM.MAX_EPOCH", 2),
             monkeypatch=monkeypatch).train()
    assert again.restored["steps"] == counter.steps and torch.equal(again.restored["mean"], torch.ones(2))

    import numpy as np
    with pytest.raises(PluginError, match=r"call-log.*state\['ratio'\], a numpy.float64.*weights_only"):
        run_with(Counter({"ratio": np.float64(0.5)}), demo_root, tmp_path / "b", trainer="CoOp", opts=opts,
                 monkeypatch=monkeypatch).train()


def test_the_context_holds_its_trainer_weakly_and_takes_no_attributes(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated", opts=OPTS)
    context = trainer.hook_context
    assert isinstance(context, HookContext) and context is trainer.hook_context
    assert context.gate_heads == trainer.gate_heads and context.param_groups is trainer.optim.param_groups
    assert not hasattr(context, "batch_idx")  # no training batch yet
    with pytest.raises(AttributeError):
        context.remedy_factor = 2.0  # plugins keep their objects in context.store
    del trainer
    gc.collect()
    with pytest.raises(ReferenceError, match="no longer exists"):
        context.cfg


def test_a_hook_written_for_the_trainer_argument_is_told_about_the_context():
    class OldStyle:
        @hookimpl
        def after_epoch(self, trainer):
            pass

    plugins = load_plugins(autoload=False)
    with pytest.raises(PluginError, match=r"(?s)plugin 'old-style'.*{'trainer'}.*"
                                          r"receive `context` \(a gates.HookContext\)"):
        plugins.register(OldStyle(), "old-style", "old-style-dist", "0.1")


def test_a_plugin_trainer_named_like_a_builtin_is_an_error_naming_both(monkeypatch):
    from trainers.coop import CoOp
    from trainers.engine import TRAINER_REGISTRY

    class Impostor(CoOp):
        pass
    Impostor.__name__ = Impostor.__qualname__ = "CoCoOp"

    class Shadowing:
        @hookimpl
        def gatescope_register_trainers(self, register):
            register(Impostor)

    monkeypatch.setattr(TRAINER_REGISTRY, "_obj_map", dict(TRAINER_REGISTRY._obj_map))
    plugins = load_plugins(autoload=False)
    plugins.register(Shadowing(), "shadowing", "shadowing-dist", "2.0")
    with pytest.raises(PluginError, match=r"plugin 'shadowing' \(distribution shadowing-dist 2.0\) registers trainer "
                                          r"'CoCoOp' \(.*test_plugin_contract.*\), but gatescope's built-in trainer "
                                          r"'CoCoOp' \(trainers.cocoop.CoCoOp\)"):
        plugins.register_trainers(TRAINER_REGISTRY)
    assert TRAINER_REGISTRY.get("CoCoOp").__module__ == "trainers.cocoop"


def test_the_example_plugin_reads_the_run_through_the_context(demo_root, tmp_path, monkeypatch):
    """The worktree's tests/example_plugin (the README's), loaded from its file."""
    path = os.path.join(REPO, "tests", "example_plugin", "gatescope_lowrank_gate.py")
    spec = importlib.util.spec_from_file_location("gatescope_lowrank_gate_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugins = load_plugins(autoload=False)
    plugins.register(module, "lowrank", "gatescope-lowrank-gate", "0.1.0")
    monkeypatch.setattr("trainers.plugins._MANAGER", plugins)
    written = []
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated",
                                 opts=OPTS + ("GATE.NAME", "lowrank", "GATE.LOWRANK.RANK", 2))
    monkeypatch.setattr(trainer, "write_scalar", lambda tag, value, step=None: written.append((tag, value, step)))
    trainer.train()
    ranks = [(tag, step) for tag, value, step in written if tag.startswith("lowrank/")]
    assert ranks == [("lowrank/length/down_norm", 1), ("lowrank/length/down_norm", 2)]


# ---------------------------------------------------------------- package structure
PACKAGES = ("trainers", "gates", "diagnostics")


def imported_packages(package):
    """The gatescope packages that the modules of `package` import (any import statement, at any
    depth, and importlib.import_module("...") of a literal name)."""
    found = set()
    for folder, _, files in os.walk(os.path.join(REPO, package)):
        for name in files:
            if not name.endswith(".py"):
                continue
            tree = ast.parse(open(os.path.join(folder, name), encoding="utf-8").read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""] if node.level == 0 else []
                elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
                      == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
                    names = [str(node.args[0].value)]
                else:
                    continue
                found |= {n.split(".")[0] for n in names} & set(PACKAGES)
    return found - {package}


def test_packages_import_each_other_without_a_cycle():
    """gates (the contract, hooks, plumbing) imports no other package; diagnostics imports only
    gates; trainers (the application) imports both. Any cycle among them fails here."""
    graph = {package: imported_packages(package) for package in PACKAGES}
    assert graph["gates"] == set(), graph
    assert graph["diagnostics"] <= {"gates"}, graph

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n))) for n in graph[start])
    cycles = [p for p in PACKAGES if reaches(p, p)]
    assert not cycles, f"import cycle through {cycles}: {graph}"


class FailsAfterTheResults:
    """A plugin whose after_test fails after the results file was written (trylast: after the
    built-in results plugin), as the diagnostics did once with a bug in their summary."""

    @hookimpl(trylast=True)
    def after_test(self, context, split, results):
        raise RuntimeError("summary failed")


def test_a_run_stopped_after_its_results_were_written_is_not_finished_until_resumed(demo_root, tmp_path,
                                                                                      monkeypatch):
    from trainers.tools.runs import is_complete, read_runs

    opts = OPTS + ("TEST.FINAL_MODEL", "last_step")
    plugins = load_plugins(autoload=False)
    plugins.register(FailsAfterTheResults(), "fails", "fails-dist", "1.0")
    monkeypatch.setattr("trainers.plugins._MANAGER", plugins)
    run = build_demo_trainer(demo_root, tmp_path / "run", trainer="CoOpGated", opts=opts)
    with pytest.raises(PluginError, match="summary failed"):
        run.train()
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["results"]["test"]["accuracy"] >= 0  # the final test is on record ...
    assert record["stopped"].startswith("PluginError: plugin 'fails'")  # ... and so is the stop
    assert not is_complete(str(tmp_path / "run"))  # a sweep runs the same command again
    [found] = read_runs([str(tmp_path / "run")])
    assert found.status == "failed" and "stopped after its results were written" in found.reason

    monkeypatch.undo()  # fixed: the same command resumes, tests again and clears the mark
    resumed = build_demo_trainer(demo_root, tmp_path / "run", trainer="CoOpGated", opts=opts)
    resumed.train()
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "stopped" not in record and is_complete(str(tmp_path / "run"))
    assert (tmp_path / "run" / "diagnostics" / "summary.json").exists()
