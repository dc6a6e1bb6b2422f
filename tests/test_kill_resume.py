"""Runs killed with SIGKILL at several points resume to the same weights, accuracy and diagnostics.

Each kill is deterministic: env GATESCOPE_TEST_KILL_AT=<point>@<n> makes the run SIGKILL itself
the n-th time it reaches <point> (trainers/engine/utils.py kill_point). A killed run is then
restarted with the same command, possibly killed again elsewhere, until it finishes; its final
checkpoint must equal, bit for bit, that of an uninterrupted run with the same seed.
"""
import json
import os
import signal
import subprocess
import sys

import torch

from conftest import DEMO_DATASET_CONFIG, REPO

ENV = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("GATESCOPE_TEST_KILL_AT", None)


def command(trainer, root, output_dir, opts):
    return [sys.executable, os.path.join(REPO, "train.py"), "--trainer", trainer, "--config-file",
            os.path.join(REPO, "configs", "trainers", trainer, "demo.yaml"), "--dataset-config-file",
            DEMO_DATASET_CONFIG, "--root", root, "--seed", "1",
            "--output-dir", str(output_dir), *map(str, opts)]


def start(cmd, kill_at=None):
    env = dict(ENV, GATESCOPE_TEST_KILL_AT=kill_at) if kill_at else ENV
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process):
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


def run(cmd, kill_at=None):
    return finish(start(cmd, kill_at))


def killed(cmd, kill_at):
    code, stdout, stderr = run(cmd, kill_at)
    assert code == -signal.SIGKILL, f"not killed at {kill_at} (exit {code}):\n{stderr[-3000:]}"
    return stdout


def completed(cmd):
    code, stdout, stderr = run(cmd)
    assert code == 0, stderr[-3000:]
    return stdout


def accuracy_lines(stdout):
    return [line for line in stdout.splitlines() if "* accuracy" in line]


def final_checkpoint(output_dir, epoch):
    return torch.load(os.path.join(output_dir, "prompt_learner", f"model.pth.tar-{epoch}"), weights_only=True)


def assert_same_checkpoint(a, b):
    torch.testing.assert_close(a["state_dict"], b["state_dict"], rtol=0, atol=0)
    torch.testing.assert_close(a["optimizer"]["state"], b["optimizer"]["state"], rtol=0, atol=0)
    assert a["scheduler"] == b["scheduler"] and a["epoch"] == b["epoch"]


def results(output_dir):
    with open(os.path.join(output_dir, "results.json"), encoding="utf-8") as f:
        return json.load(f)["results"]


# 8 shots x 10 classes = 80 images = 2 training batches of 32 per epoch; deterministic kernels.
COOP_OPTS = ("OPTIM.MAX_EPOCH", 3, "DATASET.NUM_SHOTS", 8, "TRAIN.CHECKPOINT_FREQ", 1,
             "TRAIN.DETERMINISTIC", True, "TRAIN.PRINT_FREQ", 100)


def test_coop_killed_mid_epoch_mid_checkpoint_and_mid_evaluation_ends_as_an_uninterrupted_run(demo_root, tmp_path):
    straight_dir, run_dir = tmp_path / "straight", tmp_path / "killed"
    cmd = command("CoOp", demo_root, run_dir, COOP_OPTS)
    folder = run_dir / "prompt_learner"

    # 1. During epoch 2 (its first step): epoch 1's checkpoint is the last complete one.
    killed(cmd, "step@3")
    # The uninterrupted run, beside the rest (started once the data and few-shot cache exist).
    straight = start(command("CoOp", demo_root, straight_dir, COOP_OPTS))
    assert sorted(p for p in os.listdir(folder) if not p.startswith(".")) == ["checkpoint", "model.pth.tar-1"]

    # 2. Resumed, then killed half-way through writing epoch 2's checkpoint: only a temp file.
    killed(cmd, "checkpoint_write@1")
    names = os.listdir(folder)
    assert "model.pth.tar-2" not in names and any(n.startswith(".model.pth.tar-2.") for n in names), names
    assert (folder / "checkpoint").read_text() == "model.pth.tar-1\n"

    # 3. Resumed from epoch 1 again, trained to the end, killed during the final evaluation.
    killed(cmd, "evaluation@1")
    assert (folder / "model.pth.tar-3").exists() and not (run_dir / "results.json").exists()
    assert not any(n.endswith(".tmp") for n in os.listdir(folder))  # the resume cleared the stray file

    # 4. Resumed after the last epoch: only the final test is left.
    stdout = completed(cmd)
    assert "will resume training" in stdout and "Previous epoch: 3" in stdout

    code, straight_out, straight_err = finish(straight)
    assert code == 0, straight_err[-3000:]
    assert_same_checkpoint(final_checkpoint(run_dir, 3), final_checkpoint(straight_dir, 3))
    assert accuracy_lines(stdout) == accuracy_lines(straight_out) != []
    assert results(run_dir) == results(straight_dir)


# Validated every epoch (best_val): the diagnostics evaluate at each validation and keep, between
# evaluations, values their files do not hold (the class text features behind text_drift).
GATED_OPTS = ("OPTIM.MAX_EPOCH", 2, "DATASET.NUM_SHOTS", 8, "TRAIN.CHECKPOINT_FREQ", 1,
              "TRAIN.DETERMINISTIC", True, "TRAIN.PRINT_FREQ", 100, "GATE.NAME", "mlp",
              "DIAGNOSTICS.PLOTS", False, "TEST.FINAL_MODEL", "best_val")


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_gated_run_killed_twice_has_the_weights_and_diagnostics_of_an_uninterrupted_run(demo_root, tmp_path):
    straight_dir, run_dir = tmp_path / "straight", tmp_path / "killed"
    cmd = command("CoOpGated", demo_root, run_dir, GATED_OPTS)
    killed(cmd, "step@3")  # epoch 2, first step
    straight = start(command("CoOpGated", demo_root, straight_dir, GATED_OPTS))
    # Killed in the final test (evaluation 1 of this process is epoch 2's validation): the resumed
    # run trains nothing and must still know, from the checkpoint, each gate's training-set mean
    # (the counterfactual's constant), the evaluations so far and the last class text features.
    killed(cmd, "evaluation@2")
    stdout = completed(cmd)
    code, straight_out, straight_err = finish(straight)
    assert code == 0, straight_err[-3000:]

    assert_same_checkpoint(final_checkpoint(run_dir, 2), final_checkpoint(straight_dir, 2))
    # The last process ran only the final test; the straight run printed its validations too.
    assert accuracy_lines(stdout) == accuracy_lines(straight_out)[-1:] != []
    for name in ("steps.jsonl", "epochs.jsonl"):
        assert read_lines(run_dir / "diagnostics" / name) == read_lines(straight_dir / "diagnostics" / name), name
    summaries = [json.loads((d / "diagnostics" / "summary.json").read_text()) for d in (run_dir, straight_dir)]
    for summary in summaries:
        summary.pop("output_dir")
    assert summaries[0] == summaries[1]
    assert summaries[0]["gates"] and summaries[0]["evaluations"][-1]["gates"]
    evaluations = [(e["epoch"], e["split"]) for e in summaries[0]["evaluations"]]
    assert evaluations == [(0, "val"), (1, "val"), (1, "test")]
    drifts = [e["embedding"]["text_drift"] for e in summaries[0]["evaluations"]]
    assert drifts[0] is None and all(d is not None for d in drifts[1:]), drifts


# 4 shots x 10 classes, batches of 8 drawn by RandomDomainSampler from python's global generator
# (the one CoOp's few-shot sampling drew from): a sample drawn in the run must not move its batches.
FEWSHOT_OPTS = ("OPTIM.MAX_EPOCH", 2, "DATASET.NUM_SHOTS", 4, "TRAIN.CHECKPOINT_FREQ", 1,
                "TRAIN.DETERMINISTIC", True, "TRAIN.PRINT_FREQ", 100,
                "DATALOADER.TRAIN_X.SAMPLER", "RandomDomainSampler", "DATALOADER.TRAIN_X.BATCH_SIZE", 8)


def test_run_killed_right_after_writing_the_fewshot_cache_ends_as_an_uninterrupted_run(demo_root, tmp_path):
    from test_data_caches import fresh_demo_root

    killed_root = fresh_demo_root(demo_root, tmp_path / "data_killed")
    straight_root = fresh_demo_root(demo_root, tmp_path / "data_straight")
    run_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
    # The uninterrupted run samples its few-shot data itself (a cache miss), as the killed run's first try.
    straight = start(command("CoOp", straight_root, straight_dir, FEWSHOT_OPTS))
    cmd = command("CoOp", killed_root, run_dir, FEWSHOT_OPTS)
    killed(cmd, "fewshot_cache_written")
    assert os.path.isfile(os.path.join(killed_root, "gatescope_demo", "split_fewshot", "shot_4-seed_1.pkl"))
    assert not os.path.exists(run_dir / "prompt_learner")  # killed before the first checkpoint
    stdout = completed(cmd)  # the restart reads the cache the killed run wrote
    assert "Loading preprocessed few-shot data" in stdout

    code, straight_out, straight_err = finish(straight)
    assert code == 0, straight_err[-3000:]
    assert "Saving preprocessed few-shot data" in straight_out
    assert_same_checkpoint(final_checkpoint(run_dir, 2), final_checkpoint(straight_dir, 2))
    assert accuracy_lines(stdout) == accuracy_lines(straight_out) != []
    assert results(run_dir) == results(straight_dir)
