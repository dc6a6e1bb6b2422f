"""Small helpers with Dassl's names: seeding, the tee logger, meters, files, parameter counts.

Differences from Dassl:
- the logger tees stderr too (tracebacks and warnings end up in `log.txt`, not only on screen);
- `write_json_atomic` (temp file + fsync + rename) so a result file is either whole or absent
  (these writers live in `gates.plumbing`, shared by every package; here with the kill point);
- `claim_output_dir` keeps one run's config per output folder (`config.yaml`), so a resume never
  mixes two configs;
- `kill_point` lets the tests SIGKILL a run at a chosen point (env GATESCOPE_TEST_KILL_AT).
"""
import os
import os.path as osp
import platform
import random
import shutil
import signal
import sys
import time
import warnings
from collections import defaultdict

import numpy as np
import torch

from gates import plumbing
from gates.plumbing import remove_stale_temp_files, write_json_atomic

__all__ = [
    "set_random_seed", "setup_logger", "Logger", "collect_env_info", "AverageMeter", "MetricMeter",
    "mkdir_if_missing", "check_isfile", "tolist_if_not", "count_num_param", "atomic_write_bytes",
    "write_json_atomic", "set_deterministic", "kill_point", "KILL_AT_ENV", "RUN_CONFIG_FILE",
    "RunConfigMismatchError", "config_differences", "claim_output_dir", "remove_stale_temp_files",
]


def set_random_seed(seed):
    """Seed python's `random`, numpy's global generator, torch and every CUDA device."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def set_deterministic(enabled=True):
    """Ask torch for deterministic kernels (TRAIN.DETERMINISTIC); cuDNN autotuning off with it.

    `warn_only=True`: an op without a deterministic implementation warns (naming itself) instead
    of stopping a run that may already be hours old. On the CPU gatescope's ops are deterministic
    anyway; on a GPU cuBLAS also needs CUBLAS_WORKSPACE_CONFIG, which is set here if absent.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(bool(enabled), warn_only=True)


# ---------------------------------------------------------------- test kill points
KILL_AT_ENV = "GATESCOPE_TEST_KILL_AT"
KILL_POINTS = ("step", "evaluation", "checkpoint_write", "fewshot_cache_written")
_kill_point_visits = defaultdict(int)


def kill_point(name):
    """For the kill-and-resume tests: SIGKILL this process at the chosen visit of point `name`.

    Env GATESCOPE_TEST_KILL_AT=`<point>` or `<point>@<n>` kills at the n-th (default first) time
    the process reaches `<point>`: "step" (after an optimizer step), "evaluation" (after an
    evaluation batch), "checkpoint_write" (half-way through writing a checkpoint's temp file),
    "fewshot_cache_written" (right after a few-shot sample is written to its cache file).
    Unset (always, outside the tests) this is one dict lookup.
    """
    spec = os.environ.get(KILL_AT_ENV)
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point not in KILL_POINTS:
        raise ValueError(f"{KILL_AT_ENV}={spec!r}: the point must be one of {KILL_POINTS}, optionally @<n>")
    if point != name:
        return
    _kill_point_visits[name] += 1
    if _kill_point_visits[name] == int(nth or 1):
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


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


def atomic_write_bytes(path, data, kill_point_name=None):
    """`gates.plumbing.atomic_write_bytes` (temp file, fsync, rename), with Dassl-layer test hook:
    `kill_point_name` names the test kill point reached half-way through the write."""
    halfway = (lambda: kill_point(kill_point_name)) if kill_point_name else None
    plumbing.atomic_write_bytes(path, data, halfway=halfway)


# ---------------------------------------------------------------- the run's config in its folder
RUN_CONFIG_FILE = "config.yaml"
# Keys that do not change what a run computes (where files are, how much is printed), and
# OPTIM.MAX_EPOCH, so that a finished run can be extended by resuming it with more epochs.
RESUMABLE_KEYS = ("OUTPUT_DIR", "RESUME", "CONFIG_FILE", "VERBOSE", "DATASET.ROOT", "TRAIN.PRINT_FREQ",
                  "TRAIN.OVERWRITE", "DATALOADER.NUM_WORKERS", "OPTIM.MAX_EPOCH")


class RunConfigMismatchError(RuntimeError):
    """The output folder holds a run made with another config."""


def _flatten(node, prefix=""):
    flat = {}
    for key, value in (node or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def config_differences(old_yaml, new_yaml, ignored=RESUMABLE_KEYS):
    """[(key, old value, new value)] between two `cfg.dump()` texts, keys sorted, `ignored` left out.

    A key present in only one of them shows `<absent>` for the other.
    """
    import yaml

    old, new = _flatten(yaml.safe_load(old_yaml)), _flatten(yaml.safe_load(new_yaml))
    absent = "<absent>"
    return [(key, old.get(key, absent), new.get(key, absent)) for key in sorted(set(old) | set(new))
            if key not in ignored and old.get(key, absent) != new.get(key, absent)]


def claim_output_dir(cfg, output_dir, overwrite=False, previous_run_paths=()):
    """Record `cfg` in `<output_dir>/config.yaml`, refusing a folder that holds another config's run.

    No file yet: it is written. Same config (up to RESUMABLE_KEYS): rewritten, the run resumes.
    Different: RunConfigMismatchError naming each differing key with both values, unless
    `overwrite` (TRAIN.OVERWRITE True), which first deletes `previous_run_paths` (the old run's
    checkpoint folders and result files, relative to `output_dir`) so nothing of it is resumed.
    Returns the differing keys ([] when none).
    """
    if not output_dir:
        return []
    path = osp.join(output_dir, RUN_CONFIG_FILE)
    new_text = cfg.dump()
    differences = []
    if osp.isfile(path):
        with open(path, encoding="utf-8") as f:
            differences = config_differences(f.read(), new_text)
    if differences and not overwrite:
        listed = "\n".join(f"  {key}: {old!r} in the folder, {new!r} now" for key, old, new in differences)
        raise RunConfigMismatchError(
            f'The output folder "{output_dir}" holds a run made with a different config ({path}):\n{listed}\n'
            "Resuming would mix two runs. Use another --output-dir, or add TRAIN.OVERWRITE True to delete "
            "that run's checkpoints and results and start this one from scratch."
        )
    if differences:
        print(f'TRAIN.OVERWRITE: replacing the run in "{output_dir}" (differing keys: '
              f"{', '.join(key for key, _, _ in differences)})")
        for rel in previous_run_paths:
            target = osp.join(output_dir, rel)
            if osp.isdir(target):
                shutil.rmtree(target)
            elif osp.exists(target):
                os.remove(target)
    atomic_write_bytes(path, new_text.encode("utf-8"))
    return [key for key, _, _ in differences]
