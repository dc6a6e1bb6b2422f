"""GATESCOPE_ENGINE=dassl ends a run as the built-in engine does (trainers/engine/dassl_adapter.py).

Dassl is not installable here, so gatescope's CoOpGated runs, in a subprocess, on the stand-in in
tests/dassl_standin (Dassl's documented TrainerX API and call order). The runs are those of
test_plugin_contract on the built-in engine: the hooks come in the documented order, a stop by
SIGTERM or by a failing plugin runs on_abort and after_train, the plugins' state travels with
Dassl's checkpoints, and the stopped run, resumed, ends with the diagnostics of the uninterrupted
one.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from test_plugin_contract import OPTS, collapsed, documented_order

STANDIN = os.path.join(REPO, "tests", "dassl_standin")

# Runs in the subprocess: four runs of CoOpGated on the stand-in, reported as JSON on the last line.
DRIVER = r"""
import json, os, sys
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import dassl.engine
import trainers.plugins
from conftest import build_demo_trainer
from test_plugin_contract import OPTS, CallLog, Interrupter
from trainers.engine.dassl_adapter import DasslLifecycle
from trainers.plugins import load_plugins

from gates import hookimpl

root, out = sys.argv[2], sys.argv[3]


class LateScalar:
    @hookimpl
    def after_train(self, context):
        context.write_scalar("late/after_train", 1.0, 0)


def run(folder, *plugins):
    manager = load_plugins(autoload=False)
    for i, plugin in enumerate(plugins):
        manager.register(plugin, "call-log" if i == 0 else f"plugin-{i}", "test-dist", "1.0")
    trainers.plugins._MANAGER = manager
    trainer = build_demo_trainer(root, os.path.join(out, folder), trainer="CoOpGated", opts=OPTS)
    assert isinstance(trainer, DasslLifecycle) and isinstance(trainer, dassl.engine.TrainerX)
    try:
        trainer.train()
        error = None
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
    with open(os.path.join(out, folder, "diagnostics", "summary.json")) as f:
        aborted = json.load(f).get("aborted")
    return {"calls": plugins[0].calls, "error": error, "aborted": aborted, "start_epoch": trainer.start_epoch,
            "num_batches": trainer.num_batches, "writer_open": trainer._writer is not None}


reports = {"straight": run("straight", CallLog(), LateScalar()),
           "stopped": run("run", CallLog(), Interrupter("SIGTERM")),
           "resumed": run("run", CallLog()),
           "failing": run("failing", CallLog(fail_at=("after_step", 2, lambda: RuntimeError("boom"))))}
print(json.dumps(reports))
"""


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def dassl_runs(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("dassl_engine")
    env = {**os.environ, "GATESCOPE_ENGINE": "dassl", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([REPO, STANDIN])}
    result = subprocess.run([sys.executable, "-c", DRIVER, REPO, demo_root, str(out)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), out


def test_the_hooks_run_in_the_documented_order_on_dassls_loop(dassl_runs):
    reports, out = dassl_runs
    straight = reports["straight"]
    assert straight["error"] is None
    assert collapsed(straight["calls"]) == collapsed(documented_order(
        2, straight["num_batches"], {"gated", "validating", "checkpointing", "testing"}))
    # results.json from after_test: the last validation and the final test, whole dicts.
    results = read_json(out / "straight" / "results.json")["results"]
    assert set(results) == {"val", "test"} and set(results["test"]) == {"accuracy", "error_rate", "macro_f1"}
    assert straight["aborted"] is None and (out / "straight" / "diagnostics" / "steps.jsonl").is_file()
    # The writer is closed last, once: a plugin's after_train still writes into the run's one event
    # file (Dassl's after_train closes it first; a write after that would start another file).
    assert not straight["writer_open"] and len(os.listdir(out / "straight" / "tensorboard")) == 1


@pytest.mark.parametrize("run,reason", [("stopped", "SignalInterrupt: SIGTERM received"),
                                        ("failing", "PluginError: plugin 'call-log'")])
def test_any_exception_runs_on_abort_then_after_train(dassl_runs, run, reason):
    reports, out = dassl_runs
    report = reports[run]
    assert report["error"].startswith(reason), report["error"]
    assert report["calls"][-2:] == ["on_abort", "after_train"] and "after_test" not in report["calls"][-3:]
    # Stopped at the step where it was asked to: the second step, or the first of epoch 2 (SIGTERM).
    assert report["calls"].count("after_step") == (report["num_batches"] + 1 if run == "stopped" else 2)
    assert not report["writer_open"] and report["aborted"].startswith(reason)  # the diagnostics were written


def test_a_stopped_run_resumes_with_its_plugins_state_and_ends_as_if_never_stopped(dassl_runs):
    reports, out = dassl_runs
    assert reports["resumed"]["error"] is None and reports["resumed"]["start_epoch"] == 1
    assert reports["resumed"]["calls"][0] == "load_state_dict"
    # Stopped in epoch 2: only epoch 1's checkpoint was written, with its training state beside it.
    folder = out / "run" / "prompt_learner"
    assert (folder / "model.pth.tar-1.training-state").is_file()
    for name in ("steps.jsonl", "epochs.jsonl"):
        assert read_jsonl(out / "run" / "diagnostics" / name) == read_jsonl(out / "straight" / "diagnostics" / name)
    summaries = [read_json(out / run / "diagnostics" / "summary.json") for run in ("run", "straight")]
    for summary in summaries:
        summary.pop("output_dir")
    assert summaries[0] == summaries[1]
    assert read_json(out / "run" / "results.json")["results"] == read_json(out / "straight" / "results.json")["results"]


def test_dassls_pretrained_key_takes_gatescopes_strings():
    """Dassl's MODEL.BACKBONE.PRETRAINED is a bool, over which no YAML could set an open_clip tag."""
    from trainers.engine.config import get_cfg_default
    from trainers.engine.dassl_adapter import adapt_dassl_cfg

    dassls = get_cfg_default()
    dassls.MODEL.BACKBONE.PRETRAINED = True
    adapted = adapt_dassl_cfg(dassls, get_cfg_default())
    adapted.merge_from_list(["MODEL.BACKBONE.PRETRAINED", "gatescope-demo"])
    assert adapted.MODEL.BACKBONE.PRETRAINED == "gatescope-demo"
