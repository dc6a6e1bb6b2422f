"""Shared test setup: no network, no developer-installed plugins, tiny models only."""
import os

# open_clip retries a download for ~47 s without a network; fail at once instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Keep plugins installed on a developer's machine out of the tests.
os.environ.setdefault("GATESCOPE_DISABLE_PLUGIN_AUTOLOAD", "1")

import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    """The tests write their caches (image features above all: one file per generated data
    folder) into a GATESCOPE_CACHE of their own, never into the user's. The demo backbone's
    weights are copied in from the user's cache when there and copied back at the end when the
    tests had to make them (unpacked from the shipped file, or pretrained without it)."""
    from trainers.backbone.demo_weights import demo_weights_path

    user_weights = demo_weights_path()  # where GATESCOPE_CACHE (or its default) points now
    cache = tempfile.mkdtemp(prefix="gatescope_test_cache_")
    name = os.path.basename(user_weights)
    if os.path.isfile(user_weights):
        shutil.copyfile(user_weights, os.path.join(cache, name))
    config._gatescope_cache = (cache, user_weights)
    os.environ["GATESCOPE_CACHE"] = cache  # subprocesses (train.py, benchmarks) inherit it


def pytest_unconfigure(config):
    cache, user_weights = getattr(config, "_gatescope_cache", (None, None))
    if cache is None:
        return
    made = os.path.join(cache, os.path.basename(user_weights))
    if os.path.isfile(made) and not os.path.isfile(user_weights):
        os.makedirs(os.path.dirname(user_weights), exist_ok=True)
        tmp = f"{user_weights}.tmp-{os.getpid()}"
        shutil.copyfile(made, tmp)
        os.replace(tmp, user_weights)  # atomic, as ensure_demo_weights writes it
    shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A data root holding the generated demo dataset, shared by the whole session."""
    return str(tmp_path_factory.mktemp("data"))


DEMO_DATASET_CONFIG = os.path.join(REPO, "configs", "datasets", "gatescope_demo.yaml")


def demo_args(root, output_dir, trainer="CoOp", config=None, opts=()):
    """train.py arguments for a demo-config run on the demo dataset generated under `root`
    (the run itself decides what it trains; DATASET.NAME in `opts` names another dataset)."""
    from trainers.cli import build_train_parser

    config = config or os.path.join(REPO, "configs", "trainers", trainer, "demo.yaml")
    return build_train_parser().parse_args(
        ["--trainer", trainer, "--config-file", config, "--dataset-config-file", DEMO_DATASET_CONFIG,
         "--root", root, "--output-dir", str(output_dir), "--seed", "1", *map(str, opts)])


def build_demo_trainer(root, output_dir, trainer="CoOp", opts=()):
    """A trainer built in-process from the demo config, without replacing sys.stdout."""
    import trainers
    from trainers.engine import build_trainer
    from trainers.engine.utils import set_random_seed

    cfg = trainers.setup_cfg(demo_args(root, output_dir, trainer, opts=opts))
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)
