"""The one-time files a dataset derives on first use: made once, under a lock, or kept in memory.

Split files gatescope builds, few-shot samples (`split_fewshot/shot_K-seed_S.pkl`), ImageNet's
`preprocessed.pkl` and the generated datasets are each made by the first run that needs them.
Several runs may start together (a sweep, parallel tests, two terminals), so:

- `cache_lock(target)` serialises the making of one target across processes with a file lock
  (the `filelock` package). The lock files live in gatescope's own cache
  (`$GATESCOPE_CACHE/locks`), not in the dataset folder, so a read-only dataset folder needs no
  write access for them. A process that finds the lock held prints one line and waits, then
  finds the target made and reads it.
- `write_or_keep_in_memory(path, write, what)` writes the target (atomically, through `write`)
  and, when its folder is not writable (read-only, permission denied, disk full), says so in one
  line and lets the run go on with the content in memory, as the feature cache does.
"""
import contextlib
import errno
import hashlib
import os
import os.path as osp

from filelock import FileLock, Timeout

__all__ = ["cache_lock", "lock_path", "write_or_keep_in_memory", "gatescope_cache_dir", "generated_data_dir",
           "generated_dataset_root", "UNWRITABLE_ERRNOS"]

# Seconds to wait silently for another process before saying that this one waits.
QUIET_WAIT_S = 2.0
# A failed write with one of these leaves the run going with the content in memory.
UNWRITABLE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def gatescope_cache_dir():
    """gatescope's cache folder: $GATESCOPE_CACHE, default ~/.cache/gatescope."""
    from ..backbone.demo_weights import cache_dir

    return cache_dir()


def generated_data_dir():
    """Where generated datasets go when the user names no DATASET.ROOT: <cache>/datasets."""
    return osp.join(gatescope_cache_dir(), "datasets")


def generated_dataset_root(cfg):
    """The root of a generated dataset: DATASET.ROOT when the user gave one, else `generated_data_dir()`.

    Generated data is written into a user's folder only when they asked for it there.
    """
    root = cfg.DATASET.ROOT
    return osp.abspath(osp.expanduser(root)) if root else generated_data_dir()


def lock_path(target):
    """The lock file for making `target`: one per absolute path, under <cache>/locks."""
    digest = hashlib.sha256(osp.abspath(target).encode("utf-8")).hexdigest()[:24]
    return osp.join(gatescope_cache_dir(), "locks", f"{osp.basename(target)}-{digest}.lock")


@contextlib.contextmanager
def cache_lock(target, what="cache"):
    """Hold the inter-process lock for making `target` (`what` names it in the waiting notice).

    Without a writable gatescope cache there is no lock: the atomic writes still keep every
    file whole, and concurrent runs may then repeat the work.
    """
    path = lock_path(target)
    lock = None
    try:
        os.makedirs(osp.dirname(path), exist_ok=True)
        lock = FileLock(path)
        try:
            lock.acquire(timeout=QUIET_WAIT_S)
        except Timeout:
            print(f"Waiting for another process that is making the {what} {target} (lock file {path})")
            lock.acquire()
    except OSError as e:
        if e.errno not in UNWRITABLE_ERRNOS:
            raise
        lock = None  # no lock file can be made: go on without one
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def write_or_keep_in_memory(path, write, what):
    """`write(path)`; True when written, False (after a one-line notice) when the folder is not writable.

    Any other error propagates. `what` names the content in the notice ("few-shot sample").
    """
    try:
        write(path)
        return True
    except OSError as e:
        if e.errno not in UNWRITABLE_ERRNOS:
            raise
        print(f"Note: cannot write the {what} to {path} ({e.strerror or e}); keeping it in memory for this run")
        return False
