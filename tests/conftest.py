"""Shared test setup: no network, no developer-installed plugins, tiny models only."""
import os

# open_clip retries a download for ~47 s without a network; fail at once instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Keep plugins installed on a developer's machine out of the tests.
os.environ.setdefault("GATESCOPE_DISABLE_PLUGIN_AUTOLOAD", "1")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A data root holding the generated demo dataset, shared by the whole session."""
    return str(tmp_path_factory.mktemp("data"))


def demo_args(root, output_dir, trainer="CoOp", config=None, opts=()):
    """train.py arguments for a demo-config run (the run itself decides what it trains)."""
    from trainers.cli import build_train_parser

    config = config or os.path.join(REPO, "configs", "trainers", trainer, "demo.yaml")
    return build_train_parser().parse_args(
        ["--trainer", trainer, "--config-file", config, "--root", root, "--output-dir", str(output_dir),
         "--seed", "1", *map(str, opts)])


def build_demo_trainer(root, output_dir, trainer="CoOp", opts=()):
    """A trainer built in-process from the demo config, without replacing sys.stdout."""
    import trainers
    from trainers.engine import build_trainer
    from trainers.engine.utils import set_random_seed

    cfg = trainers.setup_cfg(demo_args(root, output_dir, trainer, opts=opts))
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)
