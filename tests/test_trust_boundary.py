"""No code runs from a file gatescope is pointed at unless the user opted in (issue 16, item 1).

Every file kind is tried with a payload that, if anything in the file ran, would overwrite a
tripwire file; each test asserts the refusal (naming the file and, where there is one, the
opt-in) and that the tripwire is untouched. Kinds: training checkpoints (torch's zip format, its
pre-1.6 format, a plain pickle, a TorchScript archive), backbone weights (state dict, pickle,
TorchScript), the cached demo weights, and config files (YAML with python tags, a .py config).
"""
import os
import pickle
import sys
import types
from typing import Tuple

import pytest
import torch
from torch import Tensor

from trainers.backbone import demo_weights, load_clip
from trainers.backbone.demo_weights import DamagedCacheError
from trainers.backbone.loader import UntrustedWeightsError, _read_checkpoint
from trainers.cli import build_train_parser
from trainers.config import setup_cfg
from trainers.engine.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    UnimportableObject,
    UntrustedCheckpointError,
    load_checkpoint,
    resume_from_checkpoint,
    save_checkpoint,
)
from trainers.engine.trust import TRUST_CHECKPOINTS_ENV, TRUST_WEIGHTS_ENV, scan_pickles

TINY = "gatescope-tiny"
UNTOUCHED = "untouched\n"


@pytest.fixture(autouse=True)
def no_trust_from_env(monkeypatch):
    monkeypatch.delenv(TRUST_CHECKPOINTS_ENV, raising=False)
    monkeypatch.delenv(TRUST_WEIGHTS_ENV, raising=False)


@pytest.fixture
def tripwire(tmp_path):
    """A file that any payload in these tests overwrites if it runs."""
    path = tmp_path / "tripwire.txt"
    path.write_text(UNTOUCHED)
    yield path
    assert path.read_text() == UNTOUCHED, "code from the file ran"


class Payload:
    """Unpickling this calls exec, which overwrites the tripwire: what a crafted file does."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return exec, (f"open({self.target!r}, 'w').write('code ran')",)


def write_pickled(path, obj, fmt):
    if fmt == "zip":
        torch.save(obj, path)
    elif fmt == "legacy":  # torch.save before PyTorch 1.6, as old Dassl checkpoints are
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    return str(path)


# --------------------------------------------------------------------------------------------
# Training checkpoints
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["zip", "legacy", "pickle"])
def test_a_malicious_checkpoint_is_untrusted_not_corrupt_and_nothing_runs(tmp_path, tripwire, fmt):
    path = write_pickled(tmp_path / "model.pth.tar-1", {"state_dict": {"ctx": torch.zeros(2)},
                                                        "epoch": 1, "x": Payload(tripwire)}, fmt)
    with pytest.raises(UntrustedCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert path in message and "builtins.exec" in message and f"{TRUST_CHECKPOINTS_ENV}=1" in message
    assert "corrupt" not in message


def old_dassl_checkpoint(path, fmt):
    """A checkpoint as the original Dassl writes it (its scheduler object pickled), in `fmt`."""
    modules = {name: types.ModuleType(name) for name in ("dassl", "dassl.optim", "dassl.optim.lr_scheduler")}

    class ConstantWarmupScheduler:
        def __init__(self):
            self.last_epoch = 1

    ConstantWarmupScheduler.__module__ = "dassl.optim.lr_scheduler"
    ConstantWarmupScheduler.__qualname__ = "ConstantWarmupScheduler"
    modules["dassl.optim.lr_scheduler"].ConstantWarmupScheduler = ConstantWarmupScheduler
    sys.modules.update(modules)
    try:
        return write_pickled(path, {"state_dict": {"ctx": torch.arange(4.0)}, "epoch": 2,
                                    "scheduler": ConstantWarmupScheduler()}, fmt)
    finally:
        for name in modules:
            del sys.modules[name]


@pytest.mark.parametrize("fmt", ["legacy", "pickle"])
def test_an_old_dassl_checkpoint_in_any_format_is_offered_the_trust_route(tmp_path, monkeypatch, fmt):
    path = old_dassl_checkpoint(tmp_path / "model.pth.tar-2", fmt)
    with pytest.raises(UntrustedCheckpointError, match="original Dassl") as info:
        load_checkpoint(path)
    assert TRUST_CHECKPOINTS_ENV in str(info.value)
    monkeypatch.setenv(TRUST_CHECKPOINTS_ENV, "1")
    state = load_checkpoint(path)
    assert torch.equal(state["state_dict"]["ctx"], torch.arange(4.0)) and state["epoch"] == 2
    assert isinstance(state["scheduler"], UnimportableObject) and state["scheduler"].last_epoch == 1


def test_a_truncated_legacy_or_pickle_file_is_still_corrupt(tmp_path):
    for fmt in ("legacy", "pickle"):
        path = write_pickled(tmp_path / f"model.pth.tar-{fmt}", {"ctx": torch.zeros(3)}, fmt)
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[:20])
        with pytest.raises(CorruptCheckpointError, match="corrupt or truncated"):
            load_checkpoint(path)


def test_resume_stops_at_an_untrusted_checkpoint_instead_of_skipping_it_as_corrupt(tmp_path, tripwire):
    save_checkpoint({"state_dict": {"ctx": torch.zeros(2)}, "epoch": 1}, str(tmp_path))
    write_pickled(tmp_path / "model.pth.tar-2", {"epoch": 2, "x": Payload(tripwire)}, "pickle")
    (tmp_path / "checkpoint").write_text("model.pth.tar-2\n")
    with pytest.raises(UntrustedCheckpointError, match="model.pth.tar-2"):
        resume_from_checkpoint(str(tmp_path))


def test_a_torchscript_archive_is_never_loaded_as_a_checkpoint(tmp_path, tripwire, monkeypatch):
    path = evil_archive(tmp_path / "model.pth.tar-1", tripwire)
    monkeypatch.setenv(TRUST_CHECKPOINTS_ENV, "1")  # not even when checkpoints are trusted
    with pytest.raises(CheckpointError, match="TorchScript archive"):
        load_checkpoint(str(path))


def test_scan_names_what_a_pickle_would_call_without_unpickling(tmp_path, tripwire):
    for fmt, kind in (("zip", "zip"), ("legacy", "torch-legacy"), ("pickle", "pickle")):
        path = write_pickled(tmp_path / f"f-{fmt}", {"w": torch.ones(1), "x": Payload(tripwire)}, fmt)
        scan = scan_pickles(path)
        assert scan.kind == kind and "builtins.exec" in scan.unsafe, scan
        assert "torch._utils._rebuild_tensor_v2" in scan.globals
        assert "torch._utils._rebuild_tensor_v2" not in scan.unsafe
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    assert scan_pickles(tmp_path / "plain.pt").unsafe == []


# --------------------------------------------------------------------------------------------
# Backbone weights (MODEL.BACKBONE.PRETRAINED)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["zip", "legacy", "pickle"])
def test_pickled_weights_are_refused_naming_the_file_and_the_opt_in(tmp_path, tripwire, fmt):
    state_dict = load_clip(TINY, "").state_dict()
    path = write_pickled(tmp_path / "weights.pt", {"state_dict": state_dict, "x": Payload(tripwire)}, fmt)
    with pytest.raises(UntrustedWeightsError) as info:
        load_clip(TINY, path)
    message = str(info.value)
    assert path in message and f"{TRUST_WEIGHTS_ENV}=1" in message and "builtins.exec" in message


def test_trusted_pickled_weights_load(tmp_path, monkeypatch):
    reference = load_clip(TINY, "")
    path = write_pickled(tmp_path / "weights.pkl", {"state_dict": reference.state_dict()}, "pickle")
    with pytest.raises(UntrustedWeightsError):
        load_clip(TINY, path)
    monkeypatch.setenv(TRUST_WEIGHTS_ENV, "1")
    loaded = load_clip(TINY, path)
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


class TamperingModule(torch.nn.Module):
    """A scripted module whose __setstate__ writes into another file when the archive loads.

    The attack of issue 16: `torch.from_file(..., shared=True)` maps the file and the write
    goes to disk. `torch.jit.load` runs it; gatescope's reader must not.
    """

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.weight = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x * self.weight

    @torch.jit.export
    def __getstate__(self):
        return (self.target, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, Tensor, bool]):
        self.target = state[0]
        self.weight = state[1]
        self.training = state[2]
        mapped = torch.from_file(self.target, shared=True, size=4, dtype=torch.uint8)
        mapped.fill_(88)
        self.weight = self.weight + mapped[:3].float() * 0.0


class Holder(torch.nn.Module):
    def __init__(self, target):
        super().__init__()
        self.inner = TamperingModule(target)
        self.proj = torch.nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return self.inner(x)


def evil_archive(path, target):
    torch.jit.save(torch.jit.script(Holder(str(target))), str(path))
    return path


def test_the_tampering_archive_really_attacks_through_torch_jit_load(tmp_path):
    # The control: without it, the next test could pass because the payload is broken.
    victim = tmp_path / "victim.txt"
    victim.write_text(UNTOUCHED)
    torch.jit.load(str(evil_archive(tmp_path / "evil.pt", victim)))
    assert victim.read_text().startswith("XXXX")


def test_a_torchscript_archive_that_needs_its_code_is_refused_and_nothing_runs(tmp_path, tripwire, monkeypatch):
    path = evil_archive(tmp_path / "ViT-B-16.pt", tripwire)

    def no_jit_load(*args, **kwargs):
        raise AssertionError("torch.jit.load called without trust")
    monkeypatch.setattr(torch.jit, "load", no_jit_load)
    with pytest.raises(UntrustedWeightsError) as info:
        load_clip(TINY, str(path))
    message = str(info.value)
    assert str(path) in message and "__setstate__" in message and f"{TRUST_WEIGHTS_ENV}=1" in message


class Rescaled(torch.nn.Module):
    """A benign scripted module whose state needs its own __setstate__ (no side effects)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.arange(3.0))

    def forward(self, x):
        return x * self.weight

    @torch.jit.export
    def __getstate__(self):
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[Tensor, bool]):
        self.weight = state[0]
        self.training = state[1]


def test_an_archive_that_needs_its_code_loads_when_weights_are_trusted(tmp_path, monkeypatch):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(Rescaled()), str(path))
    with pytest.raises(UntrustedWeightsError):
        _read_checkpoint(path)
    monkeypatch.setenv(TRUST_WEIGHTS_ENV, "1")
    state_dict, is_openai = _read_checkpoint(path)
    assert torch.equal(state_dict["weight"], torch.arange(3.0)) and is_openai


# --------------------------------------------------------------------------------------------
# The demo weights: gatescope's own cache
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["pickled_code", "truncated"])
def test_a_damaged_demo_weights_file_is_a_damaged_cache_to_delete(tmp_path, tripwire, monkeypatch, damage):
    monkeypatch.setenv("GATESCOPE_CACHE", str(tmp_path))
    monkeypatch.setenv(TRUST_WEIGHTS_ENV, "1")  # trust of foreign weights never covers the cache
    path = demo_weights.demo_weights_path()
    if damage == "pickled_code":
        write_pickled(path, {"x": Payload(tripwire)}, "zip")
    else:
        torch.save({"logit_scale": torch.ones(())}, path)
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
    with pytest.raises(DamagedCacheError) as info:
        load_clip(TINY, "gatescope-demo")
    message = str(info.value)
    assert path in message and "Delete that file" in message


# --------------------------------------------------------------------------------------------
# Config files
# --------------------------------------------------------------------------------------------

def run_config(path):
    return setup_cfg(build_train_parser().parse_args(["--trainer", "CoOp", "--config-file", str(path),
                                                      "MODEL.BACKBONE.NAME", "gatescope-tiny"]))


def test_a_python_config_is_refused_before_it_can_run(tmp_path, tripwire):
    path = tmp_path / "evil.py"
    path.write_text(f"open({str(tripwire)!r}, 'w').write('code ran')\ncfg = {{'OPTIM': {{'LR': 0.1}}}}\n")
    with pytest.raises(ValueError) as info:
        run_config(path)
    message = str(info.value)
    assert str(path) in message and "YAML config files only" in message and "run as code" in message


def test_a_yaml_python_tag_is_refused_naming_the_file_and_line(tmp_path, tripwire):
    path = tmp_path / "tagged.yaml"
    path.write_text("OPTIM:\n  LR: 0.1\n  MAX_EPOCH: !!python/object/apply:builtins.exec\n"
                    f"    - \"open({str(tripwire)!r}, 'w').write('code ran')\"\n")
    with pytest.raises(ValueError) as info:
        run_config(path)
    message = str(info.value)
    assert str(path) in message and "line 3" in message
    assert "!!python/object/apply:builtins.exec" in message


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("OPTIM:\n  LR: 0.1\n   MAX_EPOCH: 3\n")
    with pytest.raises(ValueError, match=rf'config file "{path}", line 3, column \d+: YAML syntax error'):
        run_config(path)


def test_a_yaml_file_with_a_non_utf8_byte_names_the_file_and_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("OPTIM:\n  # r\u00e9glage\n  LR: 0.1\n".encode("latin-1"))
    with pytest.raises(ValueError) as info:
        run_config(path)
    assert not isinstance(info.value, UnicodeDecodeError)
    assert f'config file "{path}", line 2, column 6: byte 0xe9 is not UTF-8' in str(info.value)


def test_a_yaml_config_still_merges(tmp_path):
    path = tmp_path / "ok.yml"
    path.write_text("OPTIM:\n  LR: 0.125  # caf\u00e9 in UTF-8 is fine\n")
    assert run_config(path).OPTIM.LR == 0.125


class MixedDtypes(torch.nn.Module):
    """Parameters and buffers as OpenAI's archives hold them: fp16 weights, int64 bookkeeping."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 3).half()
        self.register_buffer("input_resolution", torch.tensor(224))
        self.register_buffer("window", torch.arange(12.0).view(3, 4)[:, 1:3])  # a strided view
        self.scale = 2.0

    def forward(self, x):
        return x * self.scale


def test_the_torchscript_reader_gives_torch_jit_loads_state_dict(tmp_path):
    from trainers.backbone.torchscript import read_torchscript_state_dict

    path = tmp_path / "mixed.pt"
    torch.jit.save(torch.jit.script(torch.nn.Sequential(MixedDtypes(), MixedDtypes())), str(path))
    expected = dict(torch.jit.load(str(path)).state_dict())
    actual = read_torchscript_state_dict(path)
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype and torch.equal(actual[key], value), key
