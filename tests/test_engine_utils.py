"""Logger tee, meters, atomic JSON and the small helpers of trainers/engine/utils.py."""
import json
import os
import random
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from trainers.engine.utils import (
    AverageMeter,
    Logger,
    MetricMeter,
    check_isfile,
    collect_env_info,
    count_num_param,
    set_random_seed,
    setup_logger,
    tolist_if_not,
    write_json_atomic,
)


@pytest.fixture
def restore_streams(monkeypatch):
    """Put back the real stdout/stderr after the test and close the log files it opened."""
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    yield
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, Logger):
            stream.close()


def test_logger_tees_to_console_and_file_and_never_clobbers(tmp_path, capsys, restore_streams):
    path = setup_logger(str(tmp_path / "run"))
    assert path == str(tmp_path / "run" / "log.txt")
    print("epoch [1/10] loss 1.0")
    print("a warning", file=sys.stderr)
    # Flushed per write: the file is complete without closing it.
    assert open(path).read() == "epoch [1/10] loss 1.0\na warning\n"
    captured = capsys.readouterr()
    assert captured.out == "epoch [1/10] loss 1.0\n" and captured.err == "a warning\n"

    second = setup_logger(str(tmp_path / "run"))
    assert second.startswith(path + "-20") and second != path  # log.txt-%Y-%m-%d-%H-%M-%S
    print("second run")
    assert open(path).read() == "epoch [1/10] loss 1.0\na warning\n"  # old log kept as it was
    assert open(second).read() == "second run\n"
    assert capsys.readouterr().out == "second run\n"  # the console is not wrapped twice


def test_logger_takes_a_txt_path_as_the_file(tmp_path, restore_streams):
    target = tmp_path / "logs" / "train.log"
    assert setup_logger(str(target)) == str(target)
    print("hello")
    assert target.read_text() == "hello\n"
    assert setup_logger(None) is None


def test_average_meter():
    meter = AverageMeter()
    meter.update(2.0)
    meter.update(torch.tensor(5.0), n=3)
    assert (meter.val, meter.sum, meter.count, meter.avg) == (5.0, 17.0, 4, 4.25)
    ema = AverageMeter(ema=True)
    ema.update(10.0)
    ema.update(20.0)
    assert ema.avg == pytest.approx(0.9 * 1.0 + 0.1 * 20.0)  # 0.9 * (0.1 * 10) + 0.1 * 20


def test_metric_meter_str_and_errors():
    meter = MetricMeter()
    meter.update({"loss": torch.tensor(1.5), "acc": 50.0})
    meter.update({"loss": 0.5, "acc": torch.tensor(100.0)})
    assert str(meter) == "loss 0.5000 (1.0000) acc 100.0000 (75.0000)"
    assert MetricMeter(delimiter=", ").__class__ is MetricMeter
    with pytest.raises(TypeError, match="expects a dict"):
        meter.update([1.0])
    with pytest.raises(ValueError, match="'loss' is a tensor of shape \\(2,\\)"):
        meter.update({"loss": torch.ones(2)})


def test_write_json_atomic(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    write_json_atomic({"accuracy": 90.0}, str(path))
    write_json_atomic({"accuracy": 91.5, "seeds": [1, 2]}, str(path))
    assert json.loads(path.read_text()) == {"accuracy": 91.5, "seeds": [1, 2]}
    assert os.listdir(path.parent) == ["summary.json"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not a private temp-file mode


def test_count_num_param():
    model = nn.Linear(3, 2)  # 6 + 2
    assert count_num_param(model) == 8
    groups = [{"name": "a", "params": [model.weight]}, {"params": model.bias}]
    assert count_num_param(params=groups) == 8
    assert count_num_param(params=[model.weight]) == 6
    with pytest.raises(ValueError):
        count_num_param()


def test_set_random_seed_repeats_all_generators():
    def draw():
        return torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random()

    set_random_seed(7)
    first = draw()
    set_random_seed(7)
    assert draw() == first


def test_small_helpers(tmp_path):
    assert tolist_if_not(3) == [3] and tolist_if_not([3]) == [3]
    (tmp_path / "f").write_text("x")
    assert check_isfile(str(tmp_path / "f"))
    with pytest.warns(UserWarning, match="No file found"):
        assert not check_isfile(str(tmp_path / "missing"))
    info = collect_env_info()
    assert f"PyTorch: {torch.__version__}" in info and "CUDA available" in info and "open_clip" in info
