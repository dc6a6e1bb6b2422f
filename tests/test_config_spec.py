"""Config declarations (gates/config_spec.py) and the one check of a merged config, before anything
is built: every built-in key declared, each kind of declaration, plugins' keys, fail-fast typos."""
import copy
import os
import subprocess
import sys

import pytest
from yacs.config import CfgNode as CN

from conftest import REPO, demo_args
from gates import hookimpl
from gates.config_spec import (
    ConfigError,
    MissingPathError,
    UnknownKeyError,
    UnknownNameError,
    above,
    at_least,
    between,
    check_keys,
    closest_path,
    copy_declarations,
    declare,
    declare_rule,
    declared,
    each,
    existing_path,
    length,
    one_of,
    registered,
    satisfies,
    suggest,
    unchecked,
    validate,
)


def full_default_cfg():
    """Every key gatescope defines: engine defaults, every trainer's, the built-in plugins'."""
    from trainers.config import extend_cfg  # (importing trainers registers the built-in trainers)
    from trainers.engine import get_cfg_default

    cfg = get_cfg_default()
    extend_cfg(cfg)
    return cfg


def walk(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, CN):
            yield from walk(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", node, key, value


# ------------------------------------------------------------------ every key declared
def test_every_built_in_key_is_declared():
    """A key added without a declaration fails here, by name. Booleans need none: yacs' type
    check is all there is to them. (Plugins' own keys may stay undeclared: yacs' type check and
    the finiteness check then apply.)"""
    undeclared = [full for full, node, key, value in walk(full_default_cfg())
                  if not isinstance(value, bool) and declared(node, key) is None]
    assert undeclared == [], f"declare these keys beside their defaults: {undeclared}"


def test_the_defaults_pass_their_own_declarations():
    cfg = full_default_cfg()
    cfg.TRAINER.NAME = "CoOp"
    cfg.DATASET.NAME = "GatescopeDemo"
    cfg.MODEL.BACKBONE.NAME = "gatescope-tiny"
    validate(cfg)


# ------------------------------------------------------------------ each kind of declaration
def node_with(**defaults):
    root = CN()
    root.A = CN()
    for key, value in defaults.items():
        root.A[key] = value
    return root


def problems_of(root, **values):
    for key, value in values.items():
        root.A[key] = value
    with pytest.raises(ConfigError) as caught:
        validate(root)
    return caught.value


def test_one_of_suggests_the_closest_choice():
    root = node_with(MODE="soft")
    declare(root.A, MODE=one_of("soft", "hard"))
    validate(root)
    error = problems_of(root, MODE="hrad")
    assert str(error) == "A.MODE must be one of ('soft', 'hard'), got 'hrad'; did you mean 'hard'?"
    assert error.keys == ["A.MODE"] and isinstance(error, ValueError)
    assert "did you mean" not in str(problems_of(root, MODE="zzzzzz"))


def test_one_of_with_a_lister_reads_the_choices_at_validation():
    choices = ["a"]
    root = node_with(X="a")
    declare(root.A, X=one_of(lambda: choices))
    root.A.X = "b"
    with pytest.raises(ConfigError):
        validate(root)
    choices.append("b")  # registered later (a plugin)
    validate(root)


def test_registered_name_is_a_key_error_listing_the_names_and_allows_empty_when_told():
    root = node_with(NAME="", OTHER="x")
    declare(root.A, NAME=registered("gate", lambda: ["mlp", "softmax"], empty_means="the default"),
            OTHER=registered("trainer", lambda: ["CoOp"]))
    root.A.OTHER = "CoOp"
    validate(root)  # "" allowed for NAME
    error = problems_of(root, NAME="mpl")
    assert isinstance(error, KeyError) and isinstance(error, UnknownNameError)
    assert str(error) == 'A.NAME: unknown gate "mpl"; did you mean "mlp"? Available gates: mlp, softmax'
    root.A.NAME = ""
    assert str(problems_of(root, OTHER="")) == "A.OTHER is empty: name a trainer. Available trainers: CoOp"


def test_ranges_name_the_bound_the_reason_and_refuse_nan():
    root = node_with(N=1, P=0.5, S=0.1)
    declare(root.A, N=at_least(1, "a count"), P=between(0, 1, hi_open=True), S=above(0))
    assert str(problems_of(root, N=0)) == "A.N must be >= 1 (a count), got 0"
    root.A.N = 1
    assert str(problems_of(root, P=1.0)) == "A.P must be >= 0 and < 1, got 1.0"
    root.A.P = 0.5
    assert "A.S must be > 0, got nan" in str(problems_of(root, S=float("nan")))


def test_each_and_length_name_the_item():
    root = node_with(STD=[0.2, 0.2, 0.2])
    declare(root.A, STD=(length(3), each(above(0))))
    assert str(problems_of(root, STD=[0.2, 0.0, 0.2])) == "A.STD[1] must be > 0, got 0.0"
    assert str(problems_of(root, STD=[0.2, 0.2])) == "A.STD must have 3 items, got [0.2, 0.2]"


def test_undeclared_floats_must_be_finite_and_other_undeclared_values_pass():
    root = node_with(X=1.0, WORDS="anything")
    root.A.WORDS = "still anything"
    validate(root)
    assert str(problems_of(root, X=float("inf"))) == "A.X must be a finite number, got inf"


def test_existing_path_suggests_the_closest_existing_path(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.pt").write_bytes(b"x")
    root = node_with(FILE="", DIR="")
    declare(root.A, FILE=existing_path("file"), DIR=existing_path("dir"))
    validate(root)
    error = problems_of(root, FILE=str(tmp_path / "weigths" / "modle.pt"))
    assert isinstance(error, FileNotFoundError) and isinstance(error, MissingPathError)
    assert str(error) == (f'A.FILE: the file "{tmp_path}/weigths/modle.pt" does not exist; '
                          f'did you mean "{tmp_path}/weights/model.pt"?')
    root.A.FILE = ""
    assert str(problems_of(root, DIR=str(tmp_path / "weights" / "model.pt"))).startswith("A.DIR: the folder")
    assert closest_path(tmp_path / "nothing" / "like" / "it") is None


def test_satisfies_and_unchecked():
    root = node_with(K=3, FREE="x")
    declare(root.A, K=satisfies(lambda k: k % 2 == 1, "odd"), FREE=unchecked("free words"))
    assert str(problems_of(root, K=4)) == "A.K must be odd, got 4"
    declare(root.A, K=satisfies(lambda k: None if k % 2 else f"{k} is even, use {k + 1}", "odd"))
    assert str(problems_of(root, K=4)) == "A.K: 4 is even, use 5"


def test_rules_run_once_each_value_is_valid_and_name_their_key():
    root = node_with(LO=1.0, HI=2.0)
    declare(root.A, LO=above(0), HI=above(0))
    declare_rule(root.A, lambda cfg: ("A.LO", "A.LO must not exceed A.HI") if cfg.A.LO > cfg.A.HI else None)
    validate(root)
    assert str(problems_of(root, LO=3.0)) == "A.LO must not exceed A.HI"
    assert str(problems_of(root, LO=-1.0)) == "A.LO must be > 0, got -1.0"  # the rule waits for valid values


def test_all_problems_are_reported_together_with_their_sources():
    root = node_with(N=1, M=1)
    declare(root.A, N=at_least(1), M=at_least(1))
    root.A.N, root.A.M = 0, 0
    with pytest.raises(ConfigError) as caught:
        validate(root, sources={"A.N": "config file x.yaml"}, extra=[("A.Z", "A.Z is wrong"), None])
    assert str(caught.value) == ("3 config values cannot work:\n"
                                 "  - A.N must be >= 1, got 0 (set in config file x.yaml)\n"
                                 "  - A.M must be >= 1, got 0\n  - A.Z is wrong")


def test_declare_needs_the_default_first_and_only_specs():
    root = node_with(X=1)
    with pytest.raises(KeyError, match="no default"):
        declare(root.A, Y=at_least(0))
    with pytest.raises(TypeError, match="must be a Spec"):
        declare(root.A, X=">= 0")


def test_declarations_survive_clone_and_copy_onto_another_tree():
    root = node_with(X=1)
    declare(root.A, X=at_least(1))
    assert declared(root.clone().A, "X") is not None and declared(copy.deepcopy(root).A, "X") is not None
    other = node_with(X=5, Y=2)  # e.g. Dassl's own default tree
    copy_declarations(root, other)
    assert declared(other.A, "X") is not None and declared(other.A, "Y") is None
    other.A.X = 0
    with pytest.raises(ConfigError, match="A.X must be >= 1"):
        validate(other)


def test_unknown_keys_get_the_closest_key_and_their_source():
    cfg = full_default_cfg()
    with pytest.raises(UnknownKeyError) as caught:
        check_keys(cfg, ["OPTIM.LR", "TRAINER.COOP.NCTX", "TRAINR.NAME"], "config file m.yaml")
    assert isinstance(caught.value, KeyError)
    assert str(caught.value) == (
        "2 unknown config keys (in config file m.yaml):\n"
        "  - unknown config key TRAINER.COOP.NCTX (in config file m.yaml); did you mean TRAINER.COOP.N_CTX?\n"
        "  - unknown config key TRAINR.NAME (in config file m.yaml); did you mean TRAINER.NAME?")


def test_suggest():
    assert suggest("CoOpp", ["CoOp", "CoCoOp"]) == '; did you mean "CoOp"?'
    assert suggest("coop", ["CoOp", "MaPLe"]) == '; did you mean "CoOp"?'
    assert suggest("image", ["image_feature", "patch_mean"]) == '; did you mean "image_feature"?'
    assert suggest("x", ["image_feature", "patch_mean"]) == ""


# ------------------------------------------------------------------ a third-party plugin's keys
class DeclaringPlugin:
    """A plugin adding MYPLUGIN.RANK (declared) and MYPLUGIN.SCALE (undeclared)."""

    @hookimpl
    def gatescope_add_config(self, cfg):
        cfg.MYPLUGIN = CN()
        cfg.MYPLUGIN.RANK = 4
        cfg.MYPLUGIN.SCALE = 1.0
        declare(cfg.MYPLUGIN, RANK=at_least(1, "a matrix rank"))


def test_a_plugin_declares_its_keys_in_its_add_config_hook(demo_root, tmp_path, monkeypatch):
    import trainers
    from trainers.plugins import load_plugins

    plugins = load_plugins(autoload=False)
    plugins.register(DeclaringPlugin(), "declaring-plugin", "declaring-dist", "1.0")
    monkeypatch.setattr("trainers.plugins._MANAGER", plugins)
    cfg = trainers.setup_cfg(demo_args(demo_root, tmp_path, opts=("MYPLUGIN.RANK", 2, "MYPLUGIN.SCALE", -3.0)))
    assert (cfg.MYPLUGIN.RANK, cfg.MYPLUGIN.SCALE) == (2, -3.0)  # undeclared: any float passes
    with pytest.raises(ConfigError, match=r"MYPLUGIN.RANK must be >= 1 \(a matrix rank\), got 0"):
        trainers.setup_cfg(demo_args(demo_root, tmp_path, opts=("MYPLUGIN.RANK", 0)))
    with pytest.raises(ConfigError, match=r"MYPLUGIN.SCALE must be a finite number, got inf"):
        trainers.setup_cfg(demo_args(demo_root, tmp_path, opts=("MYPLUGIN.SCALE", "1e999")))


# ------------------------------------------------------------------ fail in seconds: before anything heavy or written
TYPOS = [
    (("--trainer", "CoOpp"), "CoOp", KeyError, r'TRAINER.NAME: unknown trainer "CoOpp"; did you mean "CoOp"\?'),
    (("TRAINER.COOP.NCTX", "4"), "CoOp", KeyError,
     r"unknown config key TRAINER.COOP.NCTX .*did you mean TRAINER.COOP.N_CTX\?"),
    (("GATE.NAME", "mpl"), "CoOpGated", KeyError, r'GATE.NAME: unknown gate "mpl"; did you mean "mlp"\?'),
    (("GATE.TARGET", "lenght"), "CoOpGated", ValueError,
     r"GATE.TARGET must be one of .*got 'lenght'; did you mean 'length'\?"),
    (("GATE.COND", "image"), "CoCoOpGated", ValueError,
     r"GATE.COND must be one of .*got 'image'; did you mean 'image_feature'\?"),
    (("DATASET.NAME", "OxfordPet"), "CoOp", KeyError,
     r'DATASET.NAME: unknown dataset "OxfordPet"; did you mean "OxfordPets"\?'),
    (("--config-file", "configs/trainers/CoOp/dem.yaml"), "CoOp", FileNotFoundError,
     r'--config-file "configs/trainers/CoOp/dem.yaml": no such file; did you mean "configs/trainers/CoOp/demo.yaml"\?'),
]


def typo_args(root, out, trainer, typo):
    from trainers.cli import build_train_parser

    argv = ["--trainer", trainer, "--config-file", os.path.join("configs", "trainers", trainer, "demo.yaml"),
            "--output-dir", str(out)]
    if typo[0].startswith("--"):
        argv[argv.index(typo[0]) + 1] = typo[1]
    else:
        argv += list(typo)
    return build_train_parser().parse_args(argv)


@pytest.mark.parametrize("typo, trainer, error, message", TYPOS, ids=[t[0][0] for t in TYPOS])
def test_a_typo_fails_with_its_suggestion_before_data_model_or_output_exist(typo, trainer, error, message,
                                                                              tmp_path, monkeypatch):
    """run_training (train.py) stops on the typo before a dataset, a backbone or a file is made."""
    from trainers.cli import run_training

    def heavy(*args, **kwargs):
        raise AssertionError("heavy work started before the config was checked")
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("trainers.data.DataManager", heavy)
    monkeypatch.setattr("trainers.prompt_trainer.build_backbone", heavy)
    out = tmp_path / "out"
    with pytest.raises(error, match=message):
        run_training(typo_args(str(tmp_path), out, trainer, typo))
    assert not out.exists()


def test_a_mistyped_trainer_fails_without_importing_open_clip_or_torchvision(tmp_path):
    """In a fresh process (train.py's), the typo is reported before open_clip, timm or torchvision
    are imported: they cost seconds and only building a backbone or data needs them."""
    code = ("import sys\nfrom trainers.cli import train_main\n"
            "try:\n    train_main(sys.argv[1:])\nexcept SystemExit as e:\n    print('EXIT', e.code)\n"
            "print('HEAVY', sorted(m for m in ('open_clip', 'timm', 'torchvision') if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code, "--trainer", "CoOpp", "--config-file",
                             "configs/trainers/CoOp/demo.yaml", "--output-dir", str(tmp_path / "out")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert 'train.py: error: TRAINER.NAME: unknown trainer "CoOpp"; did you mean "CoOp"?' in result.stderr, \
        result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "EXIT 2\nHEAVY []" in result.stdout, result.stdout
    assert not (tmp_path / "out").exists()
