"""Shared by the benchmark scripts: timing, the demo trainer, and activation-memory accounting.

Every script times the fast path and the reference-style path in the same process, after a
warm-up, and prints `ratio: X.XX` (reference time / fast time) on its last line.
"""
import os
import statistics
import sys
import time
from contextlib import contextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GATESCOPE_DISABLE_PLUGIN_AUTOLOAD", "1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402


def banner(question, setting):
    print(f"# {question}")
    print(f"# setting: {setting}")
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {where}")


def bench_device(name=None):
    """Where a script that builds its own models runs: `name`, else the GPU when there is one
    (the trainer-based scripts follow the trainers' own rule, which is the same)."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def synchronize():
    """Wait for queued GPU work: CUDA calls return before the kernels finish, so a timing
    without this measures the queueing."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn, repeat=3, warmup=1):
    """Median wall time of fn() over `repeat` runs after `warmup` runs (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextmanager
def gpu_peak_bytes(record, device):
    """record["gpu_peak"]: the peak GPU memory the block allocated beyond what was allocated
    when it began (None on the CPU, where `saved_activation_bytes` is the measure)."""
    if torch.device(device).type != "cuda":
        record["gpu_peak"] = None
        yield record
        return
    synchronize()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield record
    synchronize()
    record["gpu_peak"] = torch.cuda.max_memory_allocated(device) - base


def mib(nbytes):
    return "n/a" if nbytes is None else f"{nbytes / 2 ** 20:.0f} MiB"


@contextmanager
def saved_activation_bytes(record):
    """Peak bytes of the distinct storages autograd keeps for the backward pass while the block
    runs (the memory that chunking with checkpointing caps); record["peak"] holds the result.
    Storages are counted once however many tensors view them; frozen weights that an op saves
    (they are resident anyway) are left out."""
    frozen = set()
    refs, live = {}, {"now": 0}
    record["peak"] = 0

    class Held:
        def __init__(self, t):
            self.t = t
            storage = t.untyped_storage()
            self.key = storage.data_ptr()
            if isinstance(t, torch.nn.Parameter) or self.key in frozen:
                self.key = None
                return
            if refs.get(self.key, 0) == 0:
                live["now"] += storage.nbytes()
                record["peak"] = max(record["peak"], live["now"])
            refs[self.key] = refs.get(self.key, 0) + 1
            self.nbytes = storage.nbytes()

        def __del__(self):
            if self.key is None:
                return
            refs[self.key] -= 1
            if refs[self.key] == 0:
                live["now"] -= self.nbytes

    record["frozen"] = frozen
    with torch.autograd.graph.saved_tensors_hooks(Held, lambda held: held.t):
        yield record


def frozen_storages(*modules):
    """data_ptrs of the modules' parameters and buffers (excluded from saved_activation_bytes)."""
    return {t.untyped_storage().data_ptr() for m in modules for t in [*m.parameters(), *m.buffers()]}


# The study's backbone shape with random weights (no download) on the demo data: config options
# for the trainer-based scripts' `--size vit_b16`.
VIT_B16_OPTS = ("MODEL.BACKBONE.NAME", "ViT-B/16", "MODEL.BACKBONE.PRETRAINED", "", "INPUT.SIZE", "(224, 224)")


def demo_trainer(root, out, trainer, opts=()):
    """A trainer built from configs/trainers/<trainer>/demo.yaml (the demo data is generated once)."""
    import trainers
    from trainers.cli import build_train_parser
    from trainers.engine import build_trainer
    from trainers.engine.utils import set_random_seed

    config = os.path.join(REPO, "configs", "trainers", trainer, "demo.yaml")
    dataset_config = os.path.join(REPO, "configs", "datasets", "gatescope_demo.yaml")  # generated under `root`
    args = build_train_parser().parse_args(
        ["--trainer", trainer, "--config-file", config, "--dataset-config-file", dataset_config, "--root", root,
         "--output-dir", out, "--seed", "1",
         *map(str, opts)])
    cfg = trainers.setup_cfg(args)
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


@contextmanager
def quiet():
    """Silence the trainers' prints (the benchmarks print only their figures)."""
    with open(os.devnull, "w") as devnull:
        old = sys.stdout
        sys.stdout = devnull
        try:
            yield
        finally:
            sys.stdout = old


def ready_for_epochs(root, trainer, opts=()):
    """demo_trainer(...) with before_train() run (its time in `.setup_seconds`: the feature cache is
    built there) and epoch 0 set, so that run_epoch() can be timed again and again."""
    import tempfile

    with quiet():
        t = demo_trainer(root, tempfile.mkdtemp(), trainer, opts)
        start = time.perf_counter()
        t.before_train()
        t.setup_seconds = time.perf_counter() - start
        t.epoch = 0
    return t


def median_epoch_seconds(trainers, epochs):
    """{name: median seconds of one run_epoch()} for {name: trainer}, the setups alternated epoch by
    epoch so that a change of the machine's load falls on all of them alike."""
    times = {name: [] for name in trainers}
    for _ in range(epochs):
        for name, t in trainers.items():
            def run(t=t):
                with quiet():
                    t.run_epoch()
            times[name].append(timed(run, repeat=1, warmup=0))
    return {name: sorted(v)[len(v) // 2] for name, v in times.items()}

