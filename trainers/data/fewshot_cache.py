"""The few-shot sample of a dataset: drawn with its own generator, cached where CoOp caches it.

`<dataset_dir>/split_fewshot/shot_<K>-seed_<S>.pkl` holds {"train": [Datum], "val": [Datum]}
(CoOp's format; ImageNet's holds only "train"), so caches made by CoOp load here and gatescope's
load in CoOp. What gatescope adds:

- Determinism independent of the cache. The sample is drawn from `random.Random(S)`, not from
  the run's global generator: a run that samples and a run that reads the cache leave the
  global generator in the same state, so they train identically (CoOp's draw is the same one:
  CoOp samples right after `random.seed(S)`).
- A record of what the sample was drawn from (key "gatescope": a digest of the split's paths
  relative to the dataset folder, labels and class names; K; S; format), which CoOp ignores.
- Checked on every load: the cache must be a dict of lists of well-formed Datum (else an error
  naming the file to delete), its record must match the current split, and every cached item
  must be an item of the current split (matched by its path's tail, label and class name).
  A cache that fails those is stale: it is sampled again and rewritten, with a one-line notice.
  Matching by path tail is also what makes a moved dataset folder keep working: the cached
  absolute paths are resolved to the current split's items, never opened as they are.
- Made once under a lock when several runs start together; kept in memory, with a notice,
  when the dataset folder is read-only.
"""
import hashlib
import os
import os.path as osp
import random
from collections import defaultdict

from ..engine.utils import kill_point
from .derived_cache import cache_lock, write_or_keep_in_memory
from .safe_pickle import dump_datum_pickle, load_datum_lists

__all__ = ["fewshot_cache_path", "fewshot_rng", "load_or_sample_fewshot", "resolve_items", "source_digest",
           "RECORD_KEY", "FORMAT_VERSION"]

RECORD_KEY = "gatescope"
FORMAT_VERSION = 1


def fewshot_cache_path(split_fewshot_dir, num_shots, seed):
    """CoOp's cache name: `<split_fewshot_dir>/shot_<K>-seed_<S>.pkl`."""
    return osp.join(split_fewshot_dir, f"shot_{num_shots}-seed_{seed}.pkl")


def fewshot_rng(seed):
    """The sampling generator: `random.Random(seed)`; unseeded when the run has no fixed seed (< 0)."""
    return random.Random(seed) if seed >= 0 else random.Random()


def source_digest(dataset_dir, train, val):
    """SHA-256 of the items a sample is drawn from: per split, (path relative to `dataset_dir`,
    label, class name, domain) of every item in order. A moved folder keeps its digest."""
    prefix = osp.join(dataset_dir, "")
    cut = len(prefix)
    lines = []
    for split in (train, val):
        lines.append("--split--")
        for item in split or ():
            path = item.impath
            lines.append(f"{path[cut:] if path.startswith(prefix) else path}\t{item.label}\t{item.classname}\t"
                         f"{item.domain}")
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def _common_tail(a, b):
    """Number of trailing path components `a` and `b` share."""
    pa, pb = a.split(os.sep), b.split(os.sep)
    n = 0
    while n < min(len(pa), len(pb)) and pa[-1 - n] == pb[-1 - n]:
        n += 1
    return n


def resolve_items(cached, current):
    """Each cached item as the item of `current` it stands for: (resolved, unresolved).

    A cached item stands for the current item with the same file name, label, class name and
    domain whose path shares the longest tail with the cached path; with no such item, or two
    equally good ones, it stays unresolved.
    """
    def basename(path):
        return path.rpartition(os.sep)[2]
    wanted = {basename(item.impath) for item in cached}
    by_name = defaultdict(list)
    for item in current:
        name = basename(item.impath)
        if name in wanted:
            by_name[name].append(item)
    resolved, unresolved = [], []
    for old in cached:
        best, best_tail, tied = None, 0, False
        for item in by_name.get(basename(old.impath), ()):
            if (item.label, item.classname, item.domain) != (old.label, old.classname, old.domain):
                continue
            tail = _common_tail(item.impath, old.impath)
            if tail > best_tail:
                best, best_tail, tied = item, tail, False
            elif tail == best_tail:
                tied = True
        if best is None or tied:
            unresolved.append(old)
        else:
            resolved.append(best)
    return resolved, unresolved


def _read(cache, train, val, digest):
    """((train, val), None) from a valid cache, or (None, why it is stale). Malformed files raise."""
    wanted = ("train",) if val is None else ("train", "val")
    data = load_datum_lists(cache, wanted)
    record = data.get(RECORD_KEY)
    if record is not None:
        if not isinstance(record, dict):
            raise ValueError(f'"{cache}": its "{RECORD_KEY}" record is a {type(record).__name__}, not a dict; the '
                             "cache is damaged. Delete it and it is sampled again.")
        if record.get("source") != digest:
            return None, "the split it was sampled from has changed since"
    out = {}
    for key, current in (("train", train), ("val", val)):
        if key not in wanted:
            continue
        resolved, unresolved = resolve_items(data[key], current)
        if unresolved:
            return None, (f'{len(unresolved)} of its {len(data[key])} "{key}" items are not in the dataset\'s '
                          f'current "{key}" split (e.g. {unresolved[0].impath})')
        out[key] = resolved
    return (out["train"], out.get("val")), None


def load_or_sample_fewshot(dataset, cache, num_shots, seed, train, val, dataset_dir):
    """(train, val) with K = `num_shots` per class (val: min(K, 4)); `val` None stays None.

    Read from `cache` when it is valid for the current split, else drawn with `fewshot_rng(seed)`
    by `dataset.generate_fewshot_dataset` and written to `cache` (see the module doc).
    """
    digest = source_digest(dataset_dir, train, val)
    if osp.exists(cache):
        result, _ = _read(cache, train, val, digest)
        if result is not None:
            print(f"Loading preprocessed few-shot data from {cache}")
            return result
    with cache_lock(cache, "few-shot sample"):
        if osp.exists(cache):  # made by another process meanwhile, or stale
            result, stale = _read(cache, train, val, digest)
            if result is not None:
                print(f"Loading preprocessed few-shot data from {cache}")
                return result
            print(f"Few-shot cache {cache} is stale ({stale}); sampling again and replacing it")
        rng = fewshot_rng(seed)
        train = dataset.generate_fewshot_dataset(train, num_shots=num_shots, rng=rng)
        data = {"train": train}
        if val is not None:
            val = dataset.generate_fewshot_dataset(val, num_shots=min(num_shots, 4), rng=rng)
            data["val"] = val
        data[RECORD_KEY] = {"format": FORMAT_VERSION, "source": digest, "num_shots": num_shots, "seed": seed}
        print(f"Saving preprocessed few-shot data to {cache}")
        if write_or_keep_in_memory(cache, lambda path: dump_datum_pickle(data, path), "few-shot sample"):
            kill_point("fewshot_cache_written")
    return train, val
