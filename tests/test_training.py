"""End-to-end CoOp training on the demo: lifecycle order, learning, resume, eval-only."""
import os
import signal
import subprocess
import sys

import torch
import torch.nn.functional as F

from conftest import REPO, build_demo_trainer

FAST = ("OPTIM.MAX_EPOCH", 3, "DATASET.NUM_SHOTS", 4, "TRAIN.PRINT_FREQ", 100)


def test_lifecycle_call_order_is_dassls(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, opts=FAST + ("DATALOADER.TRAIN_X.BATCH_SIZE", 20))
    calls = []
    names = ["before_train", "before_epoch", "run_epoch", "forward_backward", "after_backward",
             "after_step", "update_lr", "after_epoch", "after_train", "test", "save_model"]
    for name in names:
        original = getattr(trainer, name)

        def recorder(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)
        setattr(trainer, name, recorder)
    trainer.train()
    per_batch = ["forward_backward", "after_backward", "after_step"]
    n_batches = trainer.num_batches
    epoch = ["before_epoch", "run_epoch"] + per_batch * n_batches
    # Dassl steps the scheduler inside the last batch's forward_backward, after the optimizer.
    epoch.insert(len(epoch), "update_lr")
    expected = ["before_train"]
    for e in range(3):
        expected += epoch + ["after_epoch"] + (["save_model"] if e == 2 else [])
    expected += ["after_train", "test"]
    assert calls == expected


def train_set_loss(trainer):
    """Cross-entropy over the few-shot training images with the test transform (no noise)."""
    from trainers.data import DatasetWrapper, build_transform

    data = DatasetWrapper(trainer.cfg, trainer.dm.dataset.train_x, build_transform(trainer.cfg, is_train=False))
    loader = torch.utils.data.DataLoader(data, batch_size=200)
    trainer.set_model_mode("eval")
    with torch.no_grad():
        losses = [F.cross_entropy(trainer.model(b["img"]), b["label"], reduction="sum") for b in loader]
    return float(sum(losses)) / len(data)


def test_demo_training_lowers_the_training_loss(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, opts=("OPTIM.MAX_EPOCH", 20))
    before = train_set_loss(trainer)
    trainer.train()
    after = train_set_loss(trainer)
    assert after < before - 0.01, (before, after)
    assert os.path.isfile(tmp_path / "prompt_learner" / "model.pth.tar-20")


def test_eval_only_reloads_the_same_accuracy(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, opts=FAST)
    trainer.train()
    acc = trainer.test()
    fresh = build_demo_trainer(demo_root, tmp_path / "eval", opts=FAST)
    fresh.load_model(str(tmp_path), epoch=3)
    assert fresh.test() == acc
    torch.testing.assert_close(fresh.model.prompt_learner.ctx, trainer.model.prompt_learner.ctx, rtol=0, atol=0)


KILL_AFTER_EPOCH = """
import os, signal, sys
sys.argv = ["train.py"] + sys.argv[1:]
import trainers.engine.trainer as t
original = t.SimpleTrainer.checkpoint_epoch  # the epoch's last act, after after_epoch and its hooks
def checkpoint_epoch(self):
    original(self)
    if self.epoch + 1 == 2:
        os.kill(os.getpid(), signal.SIGKILL)
t.SimpleTrainer.checkpoint_epoch = checkpoint_epoch
from trainers.cli import train_main
train_main()
"""


def run_train(args, code=None):
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, os.path.join(REPO, "train.py"), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": REPO})


def test_killed_run_resumes_to_the_same_weights(demo_root, tmp_path):
    common = ["--trainer", "CoOp", "--config-file", os.path.join(REPO, "configs/trainers/CoOp/demo.yaml"),
              "--dataset-config-file", os.path.join(REPO, "configs/datasets/gatescope_demo.yaml"),
              "--root", demo_root, "--seed", "1"]
    opts = ["OPTIM.MAX_EPOCH", "4", "TRAIN.CHECKPOINT_FREQ", "1", "DATASET.NUM_SHOTS", "8"]
    killed = run_train(common + ["--output-dir", str(tmp_path / "killed")] + opts, KILL_AFTER_EPOCH)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (tmp_path / "killed/prompt_learner/model.pth.tar-2").exists()
    assert not (tmp_path / "killed/prompt_learner/model.pth.tar-3").exists()
    resumed = run_train(common + ["--output-dir", str(tmp_path / "killed")] + opts)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "will resume training" in resumed.stdout
    straight = run_train(common + ["--output-dir", str(tmp_path / "straight")] + opts)
    assert straight.returncode == 0, straight.stderr[-2000:]

    def final(run):
        return torch.load(tmp_path / run / "prompt_learner/model.pth.tar-4", weights_only=True)
    torch.testing.assert_close(final("killed")["state_dict"], final("straight")["state_dict"], rtol=0, atol=0)
    accuracy = [line for line in resumed.stdout.splitlines() if "* accuracy" in line]
    assert accuracy == [line for line in straight.stdout.splitlines() if "* accuracy" in line]
