"""Small helpers with Dassl's names: seeding, the tee logger, meters, files, parameter counts.

Differences from Dassl:
- the logger tees stderr too (tracebacks and warnings end up in `log.txt`, not only on screen);
- `write_json_atomic` (temp file + fsync + rename) so a result file is either whole or absent.
"""
import json
import os
import os.path as osp
import platform
import random
import sys
import time
import uuid
import warnings
from collections import defaultdict

import numpy as np
import torch

__all__ = [
    "set_random_seed", "setup_logger", "Logger", "collect_env_info", "AverageMeter", "MetricMeter",
    "mkdir_if_missing", "check_isfile", "tolist_if_not", "count_num_param", "atomic_write_bytes",
    "write_json_atomic",
]


def set_random_seed(seed):
    """Seed python's `random`, numpy's global generator, torch and every CUDA device."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


# ---------------------------------------------------------------- logging
class Logger:
    """A stream that writes everything to `console` and to an open log file, flushed per write.

    Flushing every write means the log is complete up to the last line even when the process is
    killed (CoOp's result parsers read `log.txt` of runs that may still be going).
    """

    def __init__(self, console, file):
        self.console = console
        self.file = file

    def write(self, msg):
        self.console.write(msg)
        if self.file is not None and not self.file.closed:
            self.file.write(msg)
            self.file.flush()

    def flush(self):
        self.console.flush()
        if self.file is not None and not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self):
        if self.file is not None and not self.file.closed:
            self.file.close()

    def __getattr__(self, name):
        # isatty, encoding, fileno, ...: libraries such as tqdm ask the stream about the console.
        if name == "console":  # not set yet (e.g. during copy): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.console, name)


def setup_logger(output=None):
    """Tee stdout and stderr into a log file; returns the file's path (None when `output` is None).

    `output` ending in `.txt` or `.log` is the file itself, anything else a folder that gets
    `log.txt`. An existing file is never overwritten: like Dassl, the new log's name gets
    `-%Y-%m-%d-%H-%M-%S` appended (e.g. `log.txt-2024-05-01-12-00-00`).
    Calling it again moves the tee to the new file (the console is not wrapped twice).
    """
    if output is None:
        return None
    output = str(output)
    fpath = output if output.endswith((".txt", ".log")) else osp.join(output, "log.txt")
    if osp.exists(fpath):
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
    mkdir_if_missing(osp.dirname(fpath))
    log_file = open(fpath, "a", encoding="utf-8")

    streams = {}
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if isinstance(current, Logger):  # unwrap an earlier setup_logger call
            current.close()
            current = current.console
        streams[name] = Logger(current, log_file)
    sys.stdout, sys.stderr = streams["stdout"], streams["stderr"]
    return fpath


def collect_env_info():
    """A few lines naming the versions and hardware a run used (printed at the top of each log)."""
    lines = [
        f"Python: {platform.python_version()} ({sys.executable})",
        f"PyTorch: {torch.__version__}",
    ]
    for package in ("torchvision", "open_clip"):
        try:
            module = __import__(package)
            lines.append(f"{package}: {getattr(module, '__version__', 'unknown')}")
        except ImportError:
            lines.append(f"{package}: not installed")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        lines.append(f"CUDA available: True (CUDA {torch.version.cuda}; {names})")
    else:
        lines.append("CUDA available: False")
    lines.append(f"CPU count: {os.cpu_count()}")
    lines.append(f"Platform: {platform.platform()}")
    return "\n".join(lines)


# ---------------------------------------------------------------- meters
class AverageMeter:
    """Running mean of a scalar: `avg = sum(val_i * n_i) / sum(n_i)`.

    With `ema=True`, `avg` is instead an exponential moving average: `avg = 0.9 * avg + 0.1 * val`
    (starting from 0, as in Dassl).
    """

    def __init__(self, ema=False):
        self.ema = ema
        self.reset()

    def reset(self):
        self.val = 0
        self.avg = 0
        self.sum = 0
        self.count = 0

    def update(self, val, n=1):
        if isinstance(val, torch.Tensor):
            val = val.item()
        self.val = val
        self.sum += val * n
        self.count += n
        if self.ema:
            self.avg = self.avg * 0.9 + self.val * 0.1
        else:
            self.avg = self.sum / self.count


class MetricMeter:
    """One AverageMeter per named metric; `str()` gives `name val (avg)` joined by `delimiter`.

    Example: `loss 1.2345 (1.3456) acc 50.0000 (48.0000)`.
    """

    def __init__(self, delimiter=" "):
        self.meters = defaultdict(AverageMeter)
        self.delimiter = delimiter

    def update(self, input_dict):
        if input_dict is None:
            return
        if not isinstance(input_dict, dict):
            raise TypeError(
                f"MetricMeter.update() expects a dict of name -> number, got {type(input_dict).__name__}; "
                "forward_backward() should return e.g. {'loss': loss.item()}"
            )
        for name, value in input_dict.items():
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise ValueError(
                        f"MetricMeter.update(): metric {name!r} is a tensor of shape {tuple(value.shape)}; "
                        "expected a number or a one-element tensor"
                    )
                value = value.item()
            self.meters[name].update(value)

    def __str__(self):
        return self.delimiter.join(f"{name} {meter.val:.4f} ({meter.avg:.4f})"
                                   for name, meter in self.meters.items())


# ---------------------------------------------------------------- files
def mkdir_if_missing(dirname):
    """Create `dirname` (and parents) unless it exists; "" means the current folder (no-op)."""
    if dirname:
        os.makedirs(dirname, exist_ok=True)


def check_isfile(fpath):
    """True if `fpath` is a file; otherwise warn (naming it) and return False."""
    isfile = osp.isfile(fpath)
    if not isfile:
        warnings.warn(f'No file found at "{fpath}"', stacklevel=2)
    return isfile


def tolist_if_not(x):
    """`x` itself if it is a list, else `[x]`."""
    return x if isinstance(x, list) else [x]


def count_num_param(model=None, params=None):
    """Number of scalar values in `model.parameters()`, or in `params`.

    `params` may hold tensors or optimizer-style group dicts whose "params" is a tensor or a list
    of tensors.
    """
    if model is not None:
        return sum(p.numel() for p in model.parameters())
    if params is not None:
        total = 0
        for p in params:
            if isinstance(p, dict):
                group = p["params"]
                total += group.numel() if isinstance(group, torch.Tensor) else sum(t.numel() for t in group)
            else:
                total += p.numel()
        return total
    raise ValueError("count_num_param() needs a model or params; got neither")


def _fsync_dir(dirname):
    # Make the rename itself durable; not possible on every platform (e.g. Windows), so best effort.
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data):
    """Write `data` to `path` so that `path` holds either its old content or all of `data`.

    The bytes go to a hidden temp file in the same folder (same file system, so the rename is
    atomic), are flushed and fsync'ed, then `os.replace`d onto `path`. A crash at any point
    leaves at worst a stray `.<name>.*.tmp` file, never a truncated `path`.
    """
    path = os.fspath(path)
    dirname = osp.dirname(osp.abspath(path))
    mkdir_if_missing(dirname)
    tmp_path = osp.join(dirname, f".{osp.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    # os.open with mode 0o666 (not tempfile.mkstemp's 0o600) so the final file gets the usual
    # umask-based permissions and stays readable by collaborators.
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if osp.exists(tmp_path):
            os.remove(tmp_path)
        raise
    _fsync_dir(dirname)


def write_json_atomic(obj, path, indent=2):
    """Serialise `obj` as JSON and write it atomically (see `atomic_write_bytes`)."""
    text = json.dumps(obj, indent=indent, sort_keys=False, allow_nan=True)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))
