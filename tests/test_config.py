"""Config merge order equals CoOp's: defaults, trainer keys, dataset YAML, method YAML, flags, opts."""
import pytest

from trainers.cli import build_train_parser
from trainers.config import setup_cfg


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_merge_order(tmp_path):
    ds = write(tmp_path, "ds.yaml", "DATASET:\n  NAME: OxfordPets\n  NUM_SHOTS: 2\nOPTIM:\n  LR: 0.1\n")
    method = write(tmp_path, "m.yaml", "OPTIM:\n  LR: 0.2\n  MAX_EPOCH: 7\nDATASET:\n  NUM_SHOTS: 4\n"
                                       "MODEL:\n  BACKBONE:\n    NAME: RN50\n")
    args = build_train_parser().parse_args([
        "--dataset-config-file", ds, "--config-file", method, "--backbone", "ViT-B/16",
        "--trainer", "CoOp", "--root", "/data", "--seed", "3", "--output-dir", "out",
        "OPTIM.MAX_EPOCH", "9", "TRAINER.COOP.N_CTX", "4"])
    cfg = setup_cfg(args)
    assert cfg.DATASET.NAME == "OxfordPets"          # dataset file
    assert cfg.OPTIM.LR == 0.2                         # method file overrides dataset file
    assert cfg.DATASET.NUM_SHOTS == 4
    assert cfg.MODEL.BACKBONE.NAME == "ViT-B/16"       # flags override files
    assert cfg.OPTIM.MAX_EPOCH == 9                    # opts override everything
    assert cfg.TRAINER.COOP.N_CTX == 4                 # trainer keys exist before merging
    assert (cfg.DATASET.ROOT, cfg.SEED, cfg.OUTPUT_DIR, cfg.TRAINER.NAME) == ("/data", 3, "out", "CoOp")
    assert cfg.TRAINER.COOP.CSC is False and cfg.DATASET.SUBSAMPLE_CLASSES == "all"
    assert cfg.is_frozen()


def test_unknown_key_names_the_file(tmp_path):
    bad = write(tmp_path, "bad.yaml", "OPTIM:\n  LEARNING_RATE: 0.1\n")
    args = build_train_parser().parse_args(["--config-file", bad])
    with pytest.raises(KeyError, match="bad.yaml"):
        setup_cfg(args)


def test_wrong_type_names_the_file(tmp_path):
    bad = write(tmp_path, "bad.yaml", "OPTIM:\n  MAX_EPOCH: ten\n")
    args = build_train_parser().parse_args(["--config-file", bad])
    with pytest.raises(ValueError, match="bad.yaml"):
        setup_cfg(args)


# ------------------------------------------------------------------ a key set by two sources: one line
def test_a_key_set_by_two_sources_is_reported_once_naming_both_and_the_winner(tmp_path, capsys):
    ds = write(tmp_path, "ds.yaml", "DATASET:\n  NAME: OxfordPets\n  NUM_SHOTS: -1\n  ROOT: /data/a\n"
                                    "OPTIM:\n  LR: 0.1\n")
    method = write(tmp_path, "m.yaml", "DATASET:\n  NUM_SHOTS: 4\nOPTIM:\n  LR: 0.1\n")
    args = build_train_parser().parse_args([
        "--dataset-config-file", ds, "--config-file", method, "--trainer", "CoOp", "--root", "/data/b",
        "--backbone", "RN50", "DATASET.NUM_SHOTS", "8"])
    setup_cfg(args)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Note:")]
    assert lines == [
        # -1 is the default, and still reported: the dataset file asked for it
        f"Note: DATASET.NUM_SHOTS = 8 from the command-line options overrides 4 from config file {method}, "
        f"-1 from dataset config file {ds}",
        f"Note: DATASET.ROOT = '/data/b' from the command-line flag --root overrides '/data/a' from dataset config "
        f"file {ds}",
    ]  # OPTIM.LR: the same value twice overrides nothing, so no line


def test_a_bad_value_names_the_source_that_set_it(tmp_path):
    method = write(tmp_path, "m.yaml", "TRAIN:\n  PRINT_FREQ: 0\n")
    args = build_train_parser().parse_args(["--config-file", method, "--trainer", "CoOp", "--backbone", "RN50"])
    with pytest.raises(ValueError, match=rf"TRAIN.PRINT_FREQ must be >= 1, got 0 \(set in config file {method}\)"):
        setup_cfg(args)


def test_no_backbone_is_an_error_saying_what_to_name(tmp_path):
    args = build_train_parser().parse_args(["--trainer", "CoOp"])
    with pytest.raises(ValueError, match=r"MODEL.BACKBONE.NAME: no backbone is named: .*ViT-B/16.*gatescope-tiny"):
        setup_cfg(args)


def test_the_study_keys_rewriting_a_gate_key_the_user_set_is_reported(capsys):
    args = build_train_parser().parse_args([
        "--trainer", "CoOp", "--backbone", "RN50", "TRAINER.COOP.USE_GATE", "True", "GATE.LR_MULT", "5.0"])
    cfg = setup_cfg(args)
    assert cfg.TRAINER.NAME == "CoOpGated" and cfg.GATE.LR_MULT == 1.0  # TRAINER.COOP.GATE_LR_MUL wins
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Note:")]
    assert lines == [
        "Note: TRAINER.NAME = 'CoOpGated' from the study's gate keys (trainers/study_keys.py) overrides 'CoOp' "
        "from the command-line flag --trainer",
        "Note: GATE.LR_MULT = 1.0 from the study's gate keys (trainers/study_keys.py) overrides 5.0 from the "
        "command-line options"]
