"""The run folder (`--output-dir`): one writer at a time, one config, no debris.

- `hold_run_folder(output_dir)`: an exclusive lock (the `filelock` package) on
  `<output_dir>/.gatescope.lock`, held for the life of a training or evaluation process. Who
  holds it (PID, host, command, start time) is written next to it, in `.gatescope.lock.json`,
  so that a second process is refused at once with a `RunFolderBusyError` naming them (two
  processes writing one folder interleave their records: duplicated, out-of-order
  `steps.jsonl` lines). The lock is the operating system's (flock): a killed holder releases it.
  Once it holds the lock, a process removes what interrupted writes left below the folder
  (`gates.plumbing` temp files): no other process may be writing there.
- `claim_output_dir(cfg, output_dir)`: the folder's `config.yaml`, which names the run that
  lives there. It ends with a checksum line, so a truncated or edited file is reported as
  damaged (with the file to delete) rather than read as another config. A resume is refused
  only for keys that change what the run computes: `NON_IDENTITY_KEYS` (paths, cache
  locations, printing, the epoch count of a run being extended) and keys this installation no
  longer knows (those of an uninstalled plugin) are left out of the comparison.
"""
import contextlib
import datetime
import hashlib
import json
import os
import os.path as osp
import shlex
import shutil
import socket
import sys

from filelock import FileLock, Timeout

from gates.plumbing import atomic_write_bytes, remove_stale_temp_files

__all__ = ["LOCK_FILE", "HOLDER_FILE", "RUN_CONFIG_FILE", "NON_IDENTITY_KEYS", "RESUMABLE_KEYS",
           "RunFolderBusyError", "RunConfigMismatchError", "DamagedRunFileError", "hold_run_folder",
           "holds_run_folder", "current_command", "remove_run_folder_debris", "config_differences",
           "read_run_config", "claim_output_dir"]

LOCK_FILE = ".gatescope.lock"
HOLDER_FILE = ".gatescope.lock.json"
RUN_CONFIG_FILE = "config.yaml"
_CHECKSUM_PREFIX = "# gatescope config sha256: "


class RunFolderBusyError(RuntimeError):
    """Another process holds the run folder's lock."""


class RunConfigMismatchError(RuntimeError):
    """The output folder holds a run made with another config."""


class DamagedRunFileError(RuntimeError):
    """A file gatescope wrote in the run folder no longer holds what was written (cut off, edited)."""


# ---------------------------------------------------------------- one writer
_held = {}  # realpath of a run folder -> [FileLock, depth]: this process's locks (re-entrant)


def current_command():
    """The command line of this process as a user would type it again (`python train.py ...`)."""
    argv = list(sys.argv) or ["python"]
    if argv[0].endswith(".py"):
        argv = ["python", *argv]
    elif argv[0]:
        argv[0] = osp.basename(argv[0])
    return shlex.join(argv)


def _holder_text(output_dir):
    """The recorded holder of `output_dir`'s lock as a phrase, or what is known of it."""
    path = osp.join(output_dir, HOLDER_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            holder = json.load(f)
        return (f"PID {holder['pid']} on host {holder['host']}, started {holder['started']}, running: "
                f"{holder['command']}"), holder.get("pid")
    except (OSError, ValueError, KeyError, TypeError):
        return f"its PID and command are not recorded ({path} is missing or unreadable)", None


def holds_run_folder(output_dir):
    """True when this process holds the lock of `output_dir`."""
    return bool(output_dir) and osp.realpath(output_dir) in _held


@contextlib.contextmanager
def hold_run_folder(output_dir, command=None):
    """Hold the exclusive lock of the run folder `output_dir` while the block runs.

    Re-entrant within a process (the command line's hold and the trainer's nest). The first hold
    writes the holder file and removes the debris of interrupted writes below the folder.

    Raises:
        RunFolderBusyError: another process holds it (at once, never waiting); the message names
            its PID, host, start time and command.
        OSError: the folder cannot be created or written (naming the path).
    """
    if not output_dir:
        yield
        return
    key = osp.realpath(output_dir)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    os.makedirs(output_dir, exist_ok=True)
    lock = FileLock(osp.join(output_dir, LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder, pid = _holder_text(output_dir)
        stop = f" (or stop it: kill {pid})" if isinstance(pid, int) else ""
        raise RunFolderBusyError(
            f'The output folder "{output_dir}" is in use by another gatescope process: {holder}. Two processes '
            "writing one run folder mix their records and checkpoints, so this one did not start. Wait for "
            f"that run to end{stop}, or give this one another --output-dir.") from None
    _held[key] = [lock, 1]
    holder_path = osp.join(output_dir, HOLDER_FILE)
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command or current_command(),
                  "started": datetime.datetime.now().isoformat(timespec="seconds")}
        atomic_write_bytes(holder_path, (json.dumps(record) + "\n").encode("utf-8"))
        removed = remove_run_folder_debris(output_dir)
        if removed:
            print(f"Removed {len(removed)} temporary file(s) left by interrupted writes: {', '.join(removed)}")
        yield
    finally:
        del _held[key]
        try:
            os.remove(holder_path)
        except OSError:
            pass
        lock.release()


def remove_run_folder_debris(output_dir):
    """Remove every temp file of an interrupted write below `output_dir` (its own lock held).

    Sub-folders that are run folders of their own (a lock file or a config.yaml of theirs) are
    left alone: another process may hold them. Returns the paths removed.
    """
    removed = []
    for dirpath, dirnames, _ in os.walk(output_dir):
        if dirpath != output_dir and (osp.exists(osp.join(dirpath, LOCK_FILE))
                                      or osp.exists(osp.join(dirpath, RUN_CONFIG_FILE))):
            dirnames[:] = []
            continue
        removed += remove_stale_temp_files(dirpath, any_writer=True)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # removed temp folders, hidden ones
    return removed


# ---------------------------------------------------------------- one config
# Keys that do not change what a run computes: where files are (the output, the dataset root,
# the feature cache), how much is printed or plotted, how data is loaded (workers, the exact
# in-memory image cache), which checkpoints are kept, whether the diagnostics run at all (they
# never change the training: a run whose diagnostics failed may finish without them), and
# OPTIM.MAX_EPOCH, so that a finished run can be extended by resuming it with more epochs (fewer
# is refused when the checkpoint is loaded, naming both).
NON_IDENTITY_KEYS = (
    "OUTPUT_DIR", "RESUME", "CONFIG_FILE", "VERBOSE", "DATASET.ROOT", "TRAIN.PRINT_FREQ", "TRAIN.OVERWRITE",
    "TRAIN.CHECKPOINT_FREQ", "DATALOADER.NUM_WORKERS", "DATALOADER.FEATURE_CACHE.DIR", "DATALOADER.IMAGE_CACHE_MB",
    "OPTIM.MAX_EPOCH", "TEST.PER_CLASS_RESULT", "TEST.COMPUTE_CMAT", "DIAGNOSTICS.PLOTS", "DIAGNOSTICS.ENABLED",
)
RESUMABLE_KEYS = NON_IDENTITY_KEYS  # the name before issue 21


def _flatten(node, prefix=""):
    flat = {}
    for key, value in (node or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def config_differences(old_yaml, new_yaml, ignored=NON_IDENTITY_KEYS):
    """[(key, old value, new value)] between two `cfg.dump()` texts, keys sorted, `ignored` left out.

    A key present in only one of them shows `<absent>` for the other.
    """
    import yaml

    old, new = _flatten(yaml.safe_load(old_yaml)), _flatten(yaml.safe_load(new_yaml))
    absent = "<absent>"
    return [(key, old.get(key, absent), new.get(key, absent)) for key in sorted(set(old) | set(new))
            if key not in ignored and old.get(key, absent) != new.get(key, absent)]


def _checksum(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run_config_text(cfg):
    """What `config.yaml` holds: `cfg.dump()` and a last line with its SHA-256 (a YAML comment,
    so yacs and CoOp's tools read the file as before)."""
    text = cfg.dump()
    if not text.endswith("\n"):
        text += "\n"
    return f"{text}{_CHECKSUM_PREFIX}{_checksum(text)}\n"


def read_run_config(path):
    """The config text recorded in `path` (a run's config.yaml), checked.

    Files written since issue 21 end with a checksum line; one whose content does not match it,
    or that lost it while keeping gatescope's layout, is damaged. Older files (no checksum) must
    at least parse as a YAML mapping.

    Raises:
        DamagedRunFileError: naming the file, what is wrong, and that deleting it lets the run go on.
    """
    def damaged(why):
        return DamagedRunFileError(
            f'"{path}" is damaged: {why}. It records the config of the run in this folder (it is not your config '
            "file). Delete it and run the same command again: the run resumes, its checkpoints are still checked "
            "against this run's trainer, backbone, classes and prompt size; or use another --output-dir.")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise damaged(f"it cannot be read ({e.strerror or e})") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise damaged(f"it is not UTF-8 text (byte {e.start})") from e
    body, _, last = text.rstrip("\n").rpartition("\n")
    if last.startswith(_CHECKSUM_PREFIX):
        body += "\n"
        if _checksum(body) != last[len(_CHECKSUM_PREFIX):].strip():
            raise damaged("its content does not match the checksum on its last line (it was cut off, or "
                          "edited by hand)")
        return body
    if _CHECKSUM_PREFIX in text:
        raise damaged("its checksum line is not the last line (the file was cut off or edited)")
    import yaml

    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise damaged(f"it has no checksum line and is not valid YAML ({str(e).splitlines()[0]}): it was cut "
                      "off or overwritten") from e
    # Without a checksum (a file of an older gatescope), a whole dump has TRAINER and ends with
    # VERSION (yacs dumps its keys sorted).
    if not isinstance(loaded, dict) or "TRAINER" not in loaded or "VERSION" not in loaded:
        raise damaged("it has no checksum line and lacks sections every config has (TRAINER, VERSION): it was "
                      "cut off or overwritten")
    return text


def claim_output_dir(cfg, output_dir, overwrite=False, previous_run_paths=()):
    """Record `cfg` in `<output_dir>/config.yaml`, refusing a folder that holds another config's run.

    No file yet: it is written. Same config (up to NON_IDENTITY_KEYS and keys unknown to this
    installation): rewritten, the run resumes. Different: RunConfigMismatchError naming each
    differing key with both values, unless `overwrite` (TRAIN.OVERWRITE True), which first deletes
    `previous_run_paths` (the old run's checkpoint folders and result files, relative to
    `output_dir`) so nothing of it is resumed. A damaged config.yaml raises DamagedRunFileError
    (TRAIN.OVERWRITE replaces it too). Returns the differing keys ([] when none).
    """
    if not output_dir:
        return []
    path = osp.join(output_dir, RUN_CONFIG_FILE)
    new_text = cfg.dump()
    differences = []
    if osp.isfile(path):
        try:
            old_text = read_run_config(path)
        except DamagedRunFileError:
            if not overwrite:
                raise
            old_text = None
            differences = [("config.yaml", "<damaged>", "<this run>")]
        if old_text is not None:
            differences = config_differences(old_text, new_text)
            unknown = [key for key, _, new in differences if new == "<absent>"]
            if unknown:
                print(f'Note: "{path}" has key(s) this installation does not know (a plugin no longer installed?), '
                      f"left out of the comparison: {', '.join(unknown)}")
                differences = [d for d in differences if d[2] != "<absent>"]
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
    atomic_write_bytes(path, run_config_text(cfg).encode("utf-8"))
    return [key for key, _, _ in differences]
