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
