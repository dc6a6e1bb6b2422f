"""Checkpoint files in Dassl's layout, safe loading, legacy Dassl files, resume, RNG state."""
import os
import random
import sys
import types

import numpy as np
import pytest
import torch

from trainers.engine.checkpoint import (
    TRUST_ENV_VAR,
    CorruptCheckpointError,
    UnimportableObject,
    UntrustedCheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    resume_from_checkpoint,
    save_checkpoint,
)


def state_at(epoch):
    return {"state_dict": {"module.ctx": torch.full((2, 3), float(epoch))}, "epoch": epoch,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.002, "name": "prompt", "params": [0]}]},
            "scheduler": {"last_epoch": epoch, "base_lrs": [0.002]}, "val_result": None}


@pytest.fixture(autouse=True)
def no_trust_from_env(monkeypatch):
    monkeypatch.delenv(TRUST_ENV_VAR, raising=False)


def test_save_writes_dassl_layout_atomically(tmp_path):
    folder = tmp_path / "prompt_learner"
    state = state_at(3)
    path = save_checkpoint(state, str(folder), is_best=True)
    assert path == str(folder / "model.pth.tar-3")
    assert sorted(os.listdir(folder)) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-3"]  # no temp files
    assert (folder / "checkpoint").read_text() == "model.pth.tar-3\n"
    assert list(state["state_dict"]) == ["module.ctx"]  # the caller's dict is untouched

    loaded = load_checkpoint(path)  # weights_only=True
    assert list(loaded["state_dict"]) == ["ctx"]  # DataParallel prefix stripped, as Dassl
    assert torch.equal(loaded["state_dict"]["ctx"], torch.full((2, 3), 3.0))
    assert loaded["epoch"] == 3 and loaded["scheduler"] == {"last_epoch": 3, "base_lrs": [0.002]}
    best = load_checkpoint(str(folder / "model-best.pth.tar"))
    assert best["epoch"] == 3

    save_checkpoint(state_at(4), str(folder), model_name="model-best.pth.tar")
    assert (folder / "checkpoint").read_text() == "model-best.pth.tar\n"
    assert load_checkpoint(str(folder / "model-best.pth.tar"))["epoch"] == 4


def test_a_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    save_checkpoint(state_at(1), str(tmp_path), model_name="model.pth.tar-1")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(state_at(2), str(tmp_path), model_name="model.pth.tar-1")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model.pth.tar-1"]
    assert load_checkpoint(str(tmp_path / "model.pth.tar-1"))["epoch"] == 1


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here.pth"):
        load_checkpoint(str(tmp_path / "nothing-here.pth"))


def test_truncated_file_is_corrupt(tmp_path):
    path = save_checkpoint(state_at(1), str(tmp_path))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="model.pth.tar-1"):
        load_checkpoint(path)
    with pytest.raises(CorruptCheckpointError):
        load_checkpoint(path, trust=True)  # trust does not make a broken file readable


def make_legacy_dassl_checkpoint(path):
    """A checkpoint as the original Dassl writes it: the warm-up scheduler object is pickled.

    The fake `dassl` modules exist only while saving, so loading sees an unimportable class.
    """
    modules = {name: types.ModuleType(name) for name in ("dassl", "dassl.optim", "dassl.optim.lr_scheduler")}

    class ConstantWarmupScheduler:
        def __init__(self):
            self.last_epoch = 1
            self.warmup_epoch = 1
            self.cons_lr = 1e-5

    ConstantWarmupScheduler.__module__ = "dassl.optim.lr_scheduler"
    ConstantWarmupScheduler.__qualname__ = "ConstantWarmupScheduler"
    modules["dassl.optim.lr_scheduler"].ConstantWarmupScheduler = ConstantWarmupScheduler
    sys.modules.update(modules)
    try:
        torch.save({"state_dict": {"ctx": torch.arange(4.0)}, "epoch": 2, "optimizer": None,
                    "scheduler": {"last_epoch": 1, "successor": ConstantWarmupScheduler()}}, path)
    finally:
        for name in modules:
            del sys.modules[name]


def test_legacy_dassl_checkpoint_needs_trust(tmp_path, monkeypatch):
    path = str(tmp_path / "model.pth.tar-2")
    make_legacy_dassl_checkpoint(path)
    with pytest.raises(UntrustedCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert TRUST_ENV_VAR in message and "original Dassl" in message and path in message
    assert "dassl.optim.lr_scheduler.ConstantWarmupScheduler" in message

    state = load_checkpoint(path, trust=True)
    assert "dassl" not in sys.modules
    assert torch.equal(state["state_dict"]["ctx"], torch.arange(4.0)) and state["epoch"] == 2
    stub = state["scheduler"]["successor"]
    assert isinstance(stub, UnimportableObject)
    assert (stub._stub_module, stub._stub_qualname) == ("dassl.optim.lr_scheduler", "ConstantWarmupScheduler")
    assert (stub.last_epoch, stub.cons_lr) == (1, 1e-5)

    monkeypatch.setenv(TRUST_ENV_VAR, "1")
    assert load_checkpoint(path)["epoch"] == 2


def corrupt(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)


def test_resume_uses_the_named_file_and_skips_a_corrupt_latest(tmp_path):
    assert resume_from_checkpoint(str(tmp_path / "absent")) is None
    assert resume_from_checkpoint(str(tmp_path)) is None
    for epoch in (1, 2, 3):
        save_checkpoint(state_at(epoch), str(tmp_path))
    path, state = resume_from_checkpoint(str(tmp_path))
    assert path.endswith("model.pth.tar-3") and state["epoch"] == 3

    corrupt(str(tmp_path / "model.pth.tar-3"))
    with pytest.warns(UserWarning, match="model.pth.tar-3"):
        path, state = resume_from_checkpoint(str(tmp_path))
    assert path.endswith("model.pth.tar-2") and state["epoch"] == 2


def test_resume_without_pointer_takes_the_highest_epoch(tmp_path):
    for epoch in (2, 10, 9):  # 10 > 9 numerically, not as text
        save_checkpoint(state_at(epoch), str(tmp_path))
    os.remove(tmp_path / "checkpoint")
    path, state = resume_from_checkpoint(str(tmp_path))
    assert path.endswith("model.pth.tar-10") and state["epoch"] == 10

    (tmp_path / "checkpoint").write_text("model.pth.tar-11\n")  # names a file that is gone
    with pytest.warns(UserWarning, match="model.pth.tar-11"):
        path, _ = resume_from_checkpoint(str(tmp_path))
    assert path.endswith("model.pth.tar-10")


def test_resume_refuses_when_every_checkpoint_is_corrupt(tmp_path):
    path = save_checkpoint(state_at(1), str(tmp_path))
    corrupt(path)
    with pytest.warns(UserWarning), pytest.raises(CorruptCheckpointError, match="model.pth.tar-1"):
        resume_from_checkpoint(str(tmp_path))


def draw_all():
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(1).tolist(),
            [random.random() for _ in range(3)], random.gauss(0, 1))


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    np.random.randn()  # leave a cached Gaussian in numpy's state
    random.gauss(0, 1)  # and in python's
    state = capture_rng_state()
    expected = draw_all()

    save_checkpoint({"epoch": 1, "rng_state": state}, str(tmp_path))
    loaded = load_checkpoint(str(tmp_path / "model.pth.tar-1"))["rng_state"]
    draw_all()  # move every generator on
    restore_rng_state(loaded)
    assert draw_all() == expected
