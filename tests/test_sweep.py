"""`gatescope sweep`: grid expansion (no Ray) and four tiny demo runs on a local Ray with 2 CPUs."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO
from trainers.tools import sweep
from trainers.tools.grid import GridError, Step, expand_grid, load_grid
from trainers.tools.layout import run_dir
from trainers.tools.runs import is_complete
from trainers.tools.sweep import sweep_main

DEMO_CONFIG = os.path.join(REPO, "configs", "trainers", "CoOpGated", "demo.yaml")


def grid_spec(tmp_path, **overrides):
    spec = {"name": "t", "output": str(tmp_path / "output"), "data": str(tmp_path / "data"),
            "datasets": ["gatescope_demo"], "seeds": [1, 2], "shots": 4,
            "trainers": {"CoOp": {"configs": ["demo"]}, "CoOpGated": {"configs": ["demo"], "gates": ["mlp"]}}}
    spec.update(overrides)
    return spec


def test_base2new_cells_train_on_base_then_test_new_from_that_model(tmp_path):
    grid = expand_grid(grid_spec(tmp_path, protocol="base2new", opts=["OPTIM.MAX_EPOCH", 2]))
    assert len(grid.cells) == 4
    cell = next(c for c in grid.cells if c.trainer == "CoOpGated" and c.seed == 2)
    train, test = cell.steps
    out = str(tmp_path / "output")
    assert train.output_dir == run_dir(out, "base2new", "train_base", "gatescope_demo", 4, "CoOpGated", "demo@mlp", 2)
    assert test.output_dir == run_dir(out, "base2new", "test_new", "gatescope_demo", 4, "CoOpGated", "demo@mlp", 2)
    assert test.model_dir == train.output_dir
    # the protocol's keys come last, after the grid's opts and the gate
    assert train.argv()[-10:] == ["OPTIM.MAX_EPOCH", "2", "GATE.NAME", "mlp", "DATASET.NAME", "GatescopeDemo",
                                  "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "base"]
    argv = test.argv(load_epoch=2)
    assert argv[argv.index("--model-dir") + 1] == train.output_dir
    assert argv[argv.index("--load-epoch") + 1] == "2" and "--eval-only" in argv
    assert argv[-2:] == ["DATASET.SUBSAMPLE_CLASSES", "new"]
    with pytest.raises(ValueError, match="load_epoch"):
        test.argv()


def test_the_grids_dataset_is_the_one_trained_on_even_when_the_trainer_config_names_another(tmp_path):
    """A trainer's demo.yaml names the demo dataset and is read after the dataset config: without
    DATASET.NAME among the protocol keys every run would silently train on the demo dataset."""
    grid = expand_grid(grid_spec(tmp_path, protocol=["fewshot", "xd"], datasets={"md": "gatescope_multidomain"},
                                 xd={"source": "gatescope_homogeneous", "targets": ["gatescope_demo"]}, seeds=[1],
                                 trainers={"CoOp": {"configs": ["demo"]}}))
    names = {step.dataset: step.opts[step.opts.index("DATASET.NAME") + 1]
             for cell in grid.cells for step in cell.steps}
    assert names == {"md": "GatescopeMultiDomain", "gatescope_homogeneous": "GatescopeHomogeneous",
                     "gatescope_demo": "GatescopeDemo"}
    assert grid.cells[0].steps[0].output_dir.split(os.sep)[-6:-4] == ["fewshot", "md"]


def test_variants_are_named_option_sets_each_in_a_folder_of_its_own(tmp_path):
    grid = expand_grid(grid_spec(tmp_path, protocol="fewshot", seeds=[1],
                                 variants={"none": [], "hot": ["GATE.LR_MULT", 100]},
                                 trainers={"CoOp": {"configs": ["demo"], "variants": ["none"]},
                                           "CoOpGated": {"configs": ["demo"], "gates": ["mlp"]}}))
    cells = {(c.trainer, c.cfg): c.steps[0] for c in grid.cells}
    assert sorted(cells) == [("CoOp", "demo~none"), ("CoOpGated", "demo@mlp~hot"), ("CoOpGated", "demo@mlp~none")]
    assert cells[("CoOpGated", "demo@mlp~hot")].opts[:4] == ["GATE.NAME", "mlp", "GATE.LR_MULT", "100"]
    assert cells[("CoOpGated", "demo@mlp~hot")].output_dir.endswith(os.path.join("demo@mlp~hot", "seed1"))
    with pytest.raises(GridError, match=r"trainers.CoOp.variants names \['hott'\], which the grid's `variants`"):
        expand_grid(grid_spec(tmp_path, variants={"hot": []}, trainers={"CoOp": {"configs": ["demo"],
                                                                                 "variants": ["hott"]}}))


def test_xd_and_dg_share_one_training_per_method_and_seed(tmp_path):
    grid = expand_grid(grid_spec(tmp_path, protocol=["xd", "dg"], seeds=[1],
                                 xd={"source": "gatescope_demo", "targets": ["imagenet_r", "eurosat"]},
                                 dg={"source": "gatescope_demo", "targets": ["imagenet_r"]}))
    assert len(grid.cells) == 2  # CoOp and CoOpGated@mlp, seed 1
    phases = [(step.phase, os.path.relpath(step.output_dir, grid.output).split(os.sep)[:3])
              for step in grid.cells[0].steps]
    assert phases == [("train", ["xd", "train", "gatescope_demo"]), ("test", ["xd", "test", "imagenet_r"]),
                      ("test", ["xd", "test", "eurosat"]), ("test", ["dg", "test", "imagenet_r"])]


@pytest.mark.parametrize("change, message", [
    ({"protocol": "zero_shot"}, "unknown protocol 'zero_shot'"),
    ({"seed": [1]}, r"unknown key\(s\) \['seed'\]"),
    ({"opts": ["OPTIM.MAX_EPOCH"]}, "KEY VALUE pairs"),
    ({"trainers": {"CoOp": {"configs": ["no_such_cfg"]}}}, "no trainer config named 'no_such_cfg'"),
    ({"datasets": ["no_such_dataset"]}, "no dataset config named 'no_such_dataset'"),
])
def test_grid_errors_say_what_is_wrong(tmp_path, change, message):
    with pytest.raises(GridError, match=message):
        expand_grid(grid_spec(tmp_path, **change))


@pytest.mark.parametrize("text, message", [
    ("name: g\nseeds: !!python/object/apply:os.system ['true']\n", r"line 2, column 8: the YAML tag "
                                                                   r"!!python/object/apply:os.system"),
    ("- just\n- a list\n", "holds a YAML list; expected a mapping"),
    ("name: [unclosed\n", "line 2"),
])
def test_a_grid_file_is_read_as_data_by_the_projects_yaml_reader(tmp_path, text, message):
    """Grid files and the dataset configs they name go through trainers/config_file.py: no YAML
    tag builds a Python object, and the error names the file and line."""
    from trainers.tools.grid import dataset_name_opts

    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(GridError, match=f"cannot read the grid file {path}: .*{message}"):
        load_grid(str(path))
    with pytest.raises(GridError, match=f"cannot read the dataset config {path}: .*{message}"):
        dataset_name_opts(str(path))


def test_dry_run_prints_every_command(tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid_spec(tmp_path, protocol="fewshot")))
    assert sweep_main([str(path), "--dry-run"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert len(commands) == 4 and all(" -m trainers.cli train " in c for c in commands)


def test_demo_grid_expands():
    grid = load_grid(os.path.join(REPO, "scripts", "grids", "demo_grid.yaml"))
    assert len(grid.cells) == 9 and all(len(cell.steps) == 2 for cell in grid.cells)


# A step's process: it starts a child (as train.py's own children, e.g. data-loader workers)
# that ignores SIGTERM, writes the child's pid to argv[1], and waits for ever.
PROCESS_TREE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
                          "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(child.pid))
import os; os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
"""


def wait_for_file(path, timeout=60):
    deadline = time.time() + timeout
    while not os.path.isfile(path):
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    with open(path) as f:
        return int(f.read())


def is_running(pid):
    """True while `pid` exists and is not a zombie (an orphan may wait for a reaper that never comes)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def assert_ends(pid, timeout=20):
    deadline = time.time() + timeout
    while is_running(pid):
        if time.time() > deadline:
            os.killpg(os.getpgid(pid), signal.SIGKILL)  # the step's whole group, left by a failing run_step
            pytest.fail(f"process {pid}, started by the step's process, outlived the step")
        time.sleep(0.05)


def test_a_step_timeout_ends_its_whole_process_tree(tmp_path, monkeypatch):
    pid_file = str(tmp_path / "grandchild.pid")
    monkeypatch.setattr(sweep, "train_command", lambda argv: [sys.executable, "-c", PROCESS_TREE, pid_file])
    monkeypatch.setattr(sweep, "KILL_GRACE_S", 1.0, raising=False)
    started = time.time()
    outcome = sweep.run_step(Step("", "d", str(tmp_path / "run"), [], []), timeout_s=5)
    assert outcome["status"] == "failed" and outcome["returncode"] == "timeout"
    assert_ends(wait_for_file(pid_file, timeout=1))
    assert "stopped after timeout_s=5 s" in outcome["error_tail"] and time.time() - started < 60


# A process that runs one step and, once the step's grandchild is there, is cancelled the way
# Ray cancels a running task: KeyboardInterrupt raised in the main thread by _thread.interrupt_main
# (no signal, so a blocking wait for the step would never notice it).
CANCELLED_STEP = """
import _thread, os, sys, threading, time
from trainers.tools import sweep
from trainers.tools.grid import Step
tree, pid_file, run = sys.argv[1:4]
sweep.train_command = lambda argv: [sys.executable, "-c", tree, pid_file]
sweep.KILL_GRACE_S = 1.0
def cancel():
    while not os.path.isfile(pid_file):
        time.sleep(0.05)
    _thread.interrupt_main()
threading.Thread(target=cancel, daemon=True).start()
sweep.run_step(Step("", "d", run, [], []))
"""


@pytest.mark.parametrize("sigint", ["python", "ignored"])
def test_cancelling_a_step_ends_its_whole_process_tree(tmp_path, sigint):
    """Also when the sweep starts with SIGINT ignored, as a shell starts background jobs: there
    _thread.interrupt_main() used to do nothing and the step outlived its cancel (found when the
    test suite itself ran in the background)."""
    pid_file = str(tmp_path / "grandchild.pid")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint == "ignored" else None
    process = subprocess.Popen([sys.executable, "-c", CANCELLED_STEP, PROCESS_TREE, pid_file, str(tmp_path / "run")],
                               env=env, stderr=subprocess.PIPE, text=True, preexec_fn=ignore)
    try:
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0 and "KeyboardInterrupt" in err
    assert_ends(wait_for_file(pid_file, timeout=1))
    with open(tmp_path / "run" / sweep.STEP_OUTPUT) as f:
        assert "cancelled (its process group was ended)" in f.read()


@pytest.fixture()
def demo_ready(demo_root):
    """Demo weights and dataset made once here, not by four runs racing to make them."""
    from trainers.backbone.demo_weights import ensure_demo_weights
    from trainers.data.demo_images import ensure_demo_dataset

    ensure_demo_weights(verbose=False)
    ensure_demo_dataset(os.path.join(demo_root, "gatescope_demo"))
    return demo_root


def test_sweep_on_local_ray_records_a_failure_and_reruns_only_it(tmp_path, demo_ready, capsys, monkeypatch):
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.fail("the sweep runs on Ray: install the extra, pip install -e '.[test,sweep]'")

    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    gated_cfg = tmp_path / "gated_demo.yaml"
    good = open(DEMO_CONFIG).read()
    gated_cfg.write_text(good.replace('NAME: "mlp"', 'NAME: "no_such_gate"'))
    spec = grid_spec(tmp_path, protocol="fewshot", shots=2, data=demo_ready, seeds=[1, 2, 3],
                     opts=["OPTIM.MAX_EPOCH", 1], env={"HF_HUB_OFFLINE": "1"},
                     trainers={"CoOp": {"configs": ["demo"]}, "CoOpGated": {"configs": [str(gated_cfg)], "seeds": [1]}})
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(spec))
    out = str(tmp_path / "output")
    failed_dir = run_dir(out, "fewshot", "", "gatescope_demo", 2, "CoOpGated", "gated_demo", 1)

    # 1st sweep: three CoOp runs finish, the gated one fails on its unknown gate
    assert sweep_main([str(grid_file), "--num-cpus", "2", "--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert "4 runs; 0 already finished, 3 finished now, 1 failed" in printed
    assert re.search(r"FAILED fewshot/gatescope_demo/shots_2/CoOpGated/gated_demo/seed1 \[train\]: .*no_such_gate",
                     printed)
    assert re.search(r"failed\s+\S*CoOpGated/gated_demo/seed1", printed)  # listed in the summary table
    with open(os.path.join(out, "sweeps", "t", "failures.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["output_dir"] for r in records] == [failed_dir] and "no_such_gate" in records[0]["error_tail"]
    assert all(is_complete(run_dir(out, "fewshot", "", "gatescope_demo", 2, "CoOp", "demo", s)) for s in (1, 2, 3))
    assert not is_complete(failed_dir)

    # the config is mended; the same sweep again starts only the missing run
    gated_cfg.write_text(good)
    assert sweep_main([str(grid_file), "--num-cpus", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "4 runs; 3 already finished, 1 finished now, 0 failed" in printed
    assert is_complete(failed_dir)
    assert re.search(r"gatescope_demo\s+CoOp\s+demo\s+2\s+3\s+\d+\.\d\d ± \d+\.\d\d", printed)
    with open(os.path.join(out, "sweeps", "t", "failures.jsonl")) as f:
        assert f.read() == ""
