"""What users of CoOp and Dassl already have keeps working, and engine choices fail clearly."""
import os
import subprocess
import sys
import types

import pytest
import torch

from conftest import REPO, build_demo_trainer
from trainers.engine.checkpoint import CheckpointMismatchError

FAST = ("OPTIM.MAX_EPOCH", 1, "DATASET.NUM_SHOTS", 2)


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO, **env}, timeout=120)


def test_dassl_engine_without_dassl_is_a_clear_error():
    result = run_python("import trainers", GATESCOPE_ENGINE="dassl")
    assert result.returncode != 0
    assert "GATESCOPE_ENGINE=dassl" in result.stderr and "unset GATESCOPE_ENGINE" in result.stderr


def test_unknown_engine_lists_the_engines():
    result = run_python("import trainers", GATESCOPE_ENGINE="detectron")
    assert result.returncode != 0 and "'gatescope', 'dassl'" in result.stderr


def test_unknown_trainer_lists_the_available_ones(demo_root, tmp_path):
    with pytest.raises(KeyError, match="Available trainers: .*CoOp"):
        build_demo_trainer(demo_root, tmp_path, trainer="CoOp", opts=("TRAINER.NAME", "CoOOp"))


def test_fp16_on_cpu_falls_back_to_fp32_naming_the_key(demo_root, tmp_path):
    with pytest.warns(UserWarning, match="TRAINER.COOP.PREC fp16 needs a GPU"):
        trainer = build_demo_trainer(demo_root, tmp_path, opts=FAST + ("TRAINER.COOP.PREC", "fp16"))
    assert trainer.prec == "fp32" and trainer.model.prompt_learner.ctx.dtype == torch.float32


def save_original_coop_checkpoint(path, ctx):
    """A checkpoint as CoOp on the original Dassl writes it: prompt buffers and a pickled scheduler."""
    module = types.ModuleType("dassl.optim.lr_scheduler")

    class ConstantWarmupScheduler:
        def __init__(self):
            self.successor = {"T_max": 50}
    ConstantWarmupScheduler.__module__ = module.__name__
    ConstantWarmupScheduler.__qualname__ = "ConstantWarmupScheduler"
    module.ConstantWarmupScheduler = ConstantWarmupScheduler
    fakes = {"dassl": types.ModuleType("dassl"), "dassl.optim": types.ModuleType("dassl.optim"),
             module.__name__: module}
    sys.modules.update(fakes)
    try:
        torch.save({"state_dict": {"ctx": ctx, "token_prefix": torch.zeros(10, 1, 64),
                                   "token_suffix": torch.zeros(10, 72, 64)},
                    "epoch": 50, "optimizer": {}, "scheduler": ConstantWarmupScheduler(), "val_result": None},
                   path)
    finally:
        for name in fakes:
            del sys.modules[name]


def test_original_coop_checkpoint_loads_only_when_trusted(demo_root, tmp_path, monkeypatch):
    trainer = build_demo_trainer(demo_root, tmp_path / "run", opts=FAST)
    ctx = torch.randn_like(trainer.model.prompt_learner.ctx)
    (tmp_path / "coop" / "prompt_learner").mkdir(parents=True)
    save_original_coop_checkpoint(tmp_path / "coop" / "prompt_learner" / "model.pth.tar-50", ctx)
    with pytest.raises(Exception, match="GATESCOPE_TRUST_CHECKPOINTS"):
        trainer.load_model(str(tmp_path / "coop"), epoch=50)
    monkeypatch.setenv("GATESCOPE_TRUST_CHECKPOINTS", "1")
    trainer.load_model(str(tmp_path / "coop"), epoch=50)
    torch.testing.assert_close(trainer.model.prompt_learner.ctx.detach(), ctx)


def test_checkpoint_of_another_shape_names_what_differs(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path / "a", opts=FAST)
    trainer.train()
    other = build_demo_trainer(demo_root, tmp_path / "b", opts=FAST + ("TRAINER.COOP.N_CTX", 8))
    # The checkpoint records its prompt size: the key is named with both values.
    with pytest.raises(CheckpointMismatchError, match=r"TRAINER.COOP.N_CTX 4 \(this run: 8\)"):
        other.load_model(str(tmp_path / "a"), epoch=1)
    # Without that record (CoOp's own files), the shapes say it.
    state = torch.load(tmp_path / "a" / "prompt_learner" / "model.pth.tar-1", weights_only=True)
    del state["meta"]
    torch.save(state, tmp_path / "a" / "prompt_learner" / "model.pth.tar-1")
    with pytest.raises(ValueError, match="ctx: checkpoint \\(4, 64\\) vs model \\(8, 64\\)"):
        other.load_model(str(tmp_path / "a"), epoch=1)


def test_checkpoints_hold_learnable_tensors_only_and_load_weights_only(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, opts=FAST)
    trainer.train()
    state = torch.load(tmp_path / "prompt_learner" / "model.pth.tar-1", weights_only=True)
    assert list(state["state_dict"]) == ["ctx"]
    assert {"rng_state", "best_result", "optimizer", "scheduler", "epoch"} <= set(state)
