"""Small helpers with Dassl's names: seeding, the tee logger, meters, files, parameter counts.

Differences from Dassl:
- the logger tees stderr too (tracebacks and warnings end up in `log.txt`, not only on screen);
- `write_json_atomic` (temp file + fsync + rename) so a result file is either whole or absent
  (these writers live in `gates.plumbing`, shared by every package; here with the kill point);
- the logger contains environment errors: a log file that can no longer be written (disk full,
  quota, read-only) or a console that is gone (a closed pipe or terminal) is reported once,
  naming it, and the run goes on with the other; it never raises into the code that printed;
- the run folder's lock and config (`claim_output_dir`) live in `run_folder.py` and are
  re-exported here;
- `kill_point` lets the tests SIGKILL a run at a chosen point (env GATESCOPE_TEST_KILL_AT).
"""
import errno
import os
import os.path as osp
import platform
import random
import signal
import sys
import time
import warnings
from collections import defaultdict

import numpy as np
import torch

from gates import plumbing
from gates.plumbing import remove_stale_temp_files, write_json_atomic

from .run_folder import (  # noqa: F401  (re-exported: their home before the run folder had its own module)
    RESUMABLE_KEYS,
    RUN_CONFIG_FILE,
    RunConfigMismatchError,
    claim_output_dir,
    config_differences,
)

__all__ = [
    "set_random_seed", "setup_logger", "Logger", "collect_env_info", "AverageMeter", "MetricMeter",
    "mkdir_if_missing", "check_isfile", "tolist_if_not", "count_num_param", "atomic_write_bytes",
    "write_json_atomic", "set_deterministic", "kill_point", "KILL_AT_ENV", "RUN_CONFIG_FILE",
    "RunConfigMismatchError", "config_differences", "claim_output_dir", "remove_stale_temp_files",
    "ENVIRONMENT_ERRNOS", "environment_error", "describe_environment_error", "guard_console", "LogFile",
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
# OSErrors that say the machine, not the run, is at fault: nothing to do with the code that was
# writing, and what the user must fix is the path (free space, permissions, a mount).
ENVIRONMENT_ERRNOS = frozenset(getattr(errno, name) for name in (
    "ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG", "EIO", "EPIPE") if hasattr(errno, name))


def environment_error(error):
    """The environment OSError behind `error` (itself or one of its causes), or None.

    A plugin that failed because the disk is full is wrapped in a PluginError; this finds the
    OSError so that the message is about the disk, not the plugin.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS:
            return error
        error = error.__cause__ or error.__context__
    return None


def describe_environment_error(error):
    """One plain sentence for an environment OSError: what failed, on which path, and what helps."""
    what = error.strerror or os.strerror(error.errno) if error.errno else str(error)
    path = f' "{error.filename}"' if error.filename else ""
    advice = {
        errno.ENOSPC: "free some space on that disk",
        getattr(errno, "EDQUOT", -1): "free some space within your quota",
        errno.EFBIG: "the file grew past the size this process may write (ulimit -f)",
        errno.EROFS: "that file system is read-only: use a writable --output-dir",
        errno.EACCES: "you may not write there: fix its permissions or use another --output-dir",
        errno.EPERM: "you may not write there: fix its permissions or use another --output-dir",
        errno.EIO: "the device reported an I/O error: check the disk or mount",
        errno.EPIPE: "the reader of the output went away",
    }.get(error.errno, "")
    return f"cannot write{path}: {what}" + (f" ({advice})" if advice else "")


class LogFile:
    """The log file both streams write to. The first failed write (disk full, quota, read-only,
    closed) is reported once on the console, naming the file, and the log stops there; the run
    goes on, printing to the console."""

    def __init__(self, path, file):
        self.path = path
        self.file = file
        self.error = None  # the error that ended the log, if any

    @property
    def usable(self):
        return self.file is not None and self.error is None and not self.file.closed

    def write(self, msg, console):
        if not self.usable:
            return
        try:
            self.file.write(msg)
            self.file.flush()
        except (OSError, ValueError) as error:
            self._lost(error, console)

    def flush(self, console):
        if not self.usable:
            return
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        except (OSError, ValueError) as error:
            self._lost(error, console)

    def _lost(self, error, console):
        self.error = error
        reason = describe_environment_error(error) if isinstance(error, OSError) else f"cannot write: {error}"
        notice = (f'\ngatescope: the log file "{self.path}" stops here: {reason}. The run goes on; its output is on '
                  "the console only.\n")
        if console is not None:
            try:
                console.write(notice)
                console.flush()
            except (OSError, ValueError):
                pass

    def close(self):
        if self.file is not None and not self.file.closed:
            try:
                self.file.close()
            except OSError:
                pass


class Logger:
    """A stream that writes everything to `console` and to the log file, flushed per write.

    Flushing every write means the log is complete up to the last line even when the process is
    killed (CoOp's result parsers read `log.txt` of runs that may still be going). Neither side
    ever raises into the code that printed: a console that is gone (a closed pipe, a lost
    terminal) is reported once in the log, and the output goes on to the log only (the console's
    descriptor is pointed at os.devnull, so that Python's own flush at exit cannot fail either);
    a log file that fails is reported once on the console (see LogFile).
    """

    def __init__(self, console, file, name="stdout"):
        self.console = console
        self.log = file if isinstance(file, LogFile) else LogFile(getattr(file, "name", None), file)
        self.name = name
        self.console_error = None

    @property
    def file(self):
        return self.log.file

    def write(self, msg):
        if self.console_error is None:
            try:
                self.console.write(msg)
            except (OSError, ValueError) as error:
                self._console_lost(error)
        self.log.write(msg, self._live_console())
        return len(msg)

    def flush(self):
        if self.console_error is None:
            try:
                self.console.flush()
            except (OSError, ValueError) as error:
                self._console_lost(error)
        self.log.flush(self._live_console())

    def _live_console(self):
        return self.console if self.console_error is None else None

    def _console_lost(self, error):
        self.console_error = error
        try:  # Python flushes the real stream at exit; give it a sink that cannot fail
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.console.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        where = f'"{self.log.path}" only' if self.log.usable else "nowhere (the log file failed too)"
        self.log.write(f"\ngatescope: the console ({self.name}) is gone ({type(error).__name__}: {error}); the run "
                       f"goes on, its output is written to {where}.\n", None)

    def close(self):
        self.log.close()

    def __getattr__(self, name):
        # isatty, encoding, fileno, ...: libraries such as tqdm ask the stream about the console.
        if name in ("console", "log"):  # not set yet (e.g. during copy): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.console, name)


def setup_logger(output=None):
    """Tee stdout and stderr into a log file; returns the file's path (None when `output` is None).

    `output` ending in `.txt` or `.log` is the file itself, anything else a folder that gets
    `log.txt`. An existing file is never overwritten: like Dassl, the new log's name gets
    `-%Y-%m-%d-%H-%M-%S` appended (e.g. `log.txt-2024-05-01-12-00-00`).
    Calling it again moves the tee to the new file (the console is not wrapped twice).
    Raises OSError naming the path when the log file cannot be created.
    """
    if output is None:
        return None
    output = str(output)
    fpath = output if output.endswith((".txt", ".log")) else osp.join(output, "log.txt")
    if osp.exists(fpath):
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
    mkdir_if_missing(osp.dirname(fpath))
    log_file = LogFile(fpath, open(fpath, "a", encoding="utf-8"))

    streams = {}
    for name in ("stdout", "stderr"):
        current, lost = getattr(sys, name), None
        if isinstance(current, Logger):  # unwrap an earlier setup_logger / guard_console call
            current.close()
            current, lost = current.console, current.console_error
        streams[name] = Logger(current, log_file, name)
        if lost is not None:  # the console was gone before the log existed: say so in the log
            streams[name]._console_lost(lost)
    sys.stdout, sys.stderr = streams["stdout"], streams["stderr"]
    return fpath


def guard_console():
    """Wrap stdout and stderr so that a console that goes away (a closed pipe, a lost terminal)
    never raises into the code that prints, before the log file exists (`setup_logger` then
    takes the console over, and notes in the log that it was lost)."""
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if not isinstance(current, Logger) and current is not None:
            setattr(sys, name, Logger(current, LogFile(None, None), name))


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
