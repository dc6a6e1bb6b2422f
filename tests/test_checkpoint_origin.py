"""Checkpoints carry and prove their origin; users' own checkpoint folders load (issues 18 and 21).

A checkpoint records its trainer, backbone, class names, prompt size keys, class-specific
tensors and last epoch: resuming onto other classes, class-specific context on other classes
and a checkpoint past OPTIM.MAX_EPOCH are refused saying which; a `checkpoint` pointer is only
followed inside its folder; the layouts MaPLe's, CoCoOp's and the study's code save load for
evaluation; `--eval-only` without `--load-epoch` loads the last checkpoint when no best exists.
"""
import os
import warnings

import pytest
import torch

from conftest import build_demo_trainer
from test_bad_inputs import image_folder
from trainers.engine.checkpoint import CheckpointError, CheckpointMismatchError

FAST = ("OPTIM.MAX_EPOCH", 1, "DATASET.NUM_SHOTS", 2, "TRAIN.PRINT_FREQ", 100)
CSC = ("TRAINER.COOP.CSC", True)
FOLDER = (("DATASET.NAME", "ImageFolder"), ("DATASET.NUM_SHOTS", 1))


def folder_opts(*extra):
    return FAST + tuple(x for pair in FOLDER for x in pair) + extra


# ---------------------------------------------------------------- class-specific context (issue 18.3)
def test_csc_context_of_the_base_classes_is_refused_on_the_new_classes(demo_root, tmp_path):
    # 10 demo classes: 5 base, 5 new. Same count, so the shapes fit: today it loads by index.
    base = build_demo_trainer(demo_root, tmp_path / "base", opts=FAST + CSC + ("DATASET.SUBSAMPLE_CLASSES", "base"))
    base.train()
    new = build_demo_trainer(demo_root, tmp_path / "new", opts=FAST + CSC + ("DATASET.SUBSAMPLE_CLASSES", "new"))
    with pytest.raises(CheckpointMismatchError,
                       match=r"class-specific prompt context \(ctx: one learned context per class, CSC True\) for "
                             r"other classes than this run's: 5 there, 5 here; only in the checkpoint: 'circle', .*"
                             r"only in this run: 'ring', .*DATASET.SUBSAMPLE_CLASSES base.*TRAINER.COOP.CSC False"):
        new.load_model(str(tmp_path / "base"), epoch=1)
    # The classes it was trained on: allowed.
    same = build_demo_trainer(demo_root, tmp_path / "same", opts=FAST + CSC + ("DATASET.SUBSAMPLE_CLASSES", "base"))
    same.load_model(str(tmp_path / "base"), epoch=1)
    torch.testing.assert_close(same.model.prompt_learner.ctx, base.model.prompt_learner.ctx)


def test_a_shared_context_still_moves_from_base_to_new_classes(demo_root, tmp_path):
    base = build_demo_trainer(demo_root, tmp_path / "base", opts=FAST + ("DATASET.SUBSAMPLE_CLASSES", "base"))
    base.train()
    new = build_demo_trainer(demo_root, tmp_path / "new", opts=FAST + ("DATASET.SUBSAMPLE_CLASSES", "new"))
    new.load_model(str(tmp_path / "base"), epoch=1)
    torch.testing.assert_close(new.model.prompt_learner.ctx, base.model.prompt_learner.ctx)


def test_csc_of_another_class_count_gets_a_csc_error_with_or_without_a_record(tmp_path):
    # 5 class folders: 3 base, 2 new.
    root = image_folder(str(tmp_path / "images"), ["ant", "bee", "cat", "dog", "eel"], per_class=4)
    base = build_demo_trainer(root, tmp_path / "base", opts=folder_opts(*CSC, "DATASET.SUBSAMPLE_CLASSES", "base"))
    base.train()
    new = build_demo_trainer(root, tmp_path / "new", opts=folder_opts(*CSC, "DATASET.SUBSAMPLE_CLASSES", "new"))
    with pytest.raises(CheckpointMismatchError, match=r"class-specific prompt context .*3 there, 2 here; only in "
                                                      r"the checkpoint: 'ant', 'bee', 'cat'; only in this run: 'dog'"):
        new.load_model(str(tmp_path / "base"), epoch=1)
    # CoOp's own checkpoints record no classes: the shapes say it, in CSC's terms.
    path = tmp_path / "base" / "prompt_learner" / "model.pth.tar-1"
    state = torch.load(path, weights_only=True)
    del state["meta"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"'ctx' is a class-specific context \(CSC True: one context per class\); "
                                         r"the checkpoint's is for 3 classes and this run has 2"):
        new.load_model(str(tmp_path / "base"), epoch=1)
    # Same count, no record: loaded by label, with a warning that the classes cannot be checked.
    same = build_demo_trainer(root, tmp_path / "same", opts=folder_opts(*CSC, "DATASET.SUBSAMPLE_CLASSES", "base"))
    with pytest.warns(UserWarning, match=r"does not record the classes its class-specific context \(ctx\)"):
        same.load_model(str(tmp_path / "base"), epoch=1)


# ---------------------------------------------------------------- resume proves its origin (issue 21.2)
def test_resume_refuses_a_checkpoint_of_other_classes_when_only_the_root_changed(tmp_path):
    first = image_folder(str(tmp_path / "a"), ["cat", "dog"], per_class=4)
    second = image_folder(str(tmp_path / "b"), ["bus", "car"], per_class=4)
    out = tmp_path / "run"
    build_demo_trainer(first, out, opts=folder_opts(*CSC)).train()
    moved = build_demo_trainer(second, out, opts=folder_opts(*CSC))  # DATASET.ROOT alone may change
    with pytest.raises(CheckpointMismatchError, match=r"made for a different run: class names \(2 there, 2 here; "
                                                      r"only in the checkpoint: 'cat', 'dog'; only in this run: "
                                                      r"'bus', 'car'\)"):
        moved.train()


def test_a_checkpoint_past_the_last_epoch_is_an_error_saying_which(demo_root, tmp_path):
    build_demo_trainer(demo_root, tmp_path, opts=FAST + ("OPTIM.MAX_EPOCH", 2)).train()
    shorter = build_demo_trainer(demo_root, tmp_path, opts=FAST + ("OPTIM.MAX_EPOCH", 1))
    with pytest.raises(CheckpointError, match=r'model.pth.tar-2" is of epoch 2, past this run\'s last epoch: '
                                              r"OPTIM.MAX_EPOCH is 1.*OPTIM.MAX_EPOCH 2 or more"):
        shorter.train()
    assert not (tmp_path / "results.json").read_text().count('"max_epoch": 1')


def test_a_checkpoint_pointer_is_followed_only_inside_its_folder(tmp_path):
    from trainers.engine.checkpoint import resume_from_checkpoint, save_checkpoint

    outside = tmp_path / "elsewhere"
    save_checkpoint({"state_dict": {"ctx": torch.ones(2)}, "epoch": 9}, str(outside))
    run = tmp_path / "run" / "prompt_learner"
    save_checkpoint({"state_dict": {"ctx": torch.zeros(2)}, "epoch": 1}, str(run))
    for named in ("../../elsewhere/model.pth.tar-9", str(outside / "model.pth.tar-9"), ".."):
        (run / "checkpoint").write_text(named + "\n")
        with pytest.warns(UserWarning, match="not a file of that folder"):
            path, state = resume_from_checkpoint(str(run))
        assert state["epoch"] == 1 and path == str(run / "model.pth.tar-1")
    # A link inside the folder that leads out of it is not followed either.
    os.symlink(outside / "model.pth.tar-9", run / "model.pth.tar-0")
    (run / "checkpoint").write_text("model.pth.tar-0\n")
    with pytest.warns(UserWarning, match="not a file of that folder"):
        assert resume_from_checkpoint(str(run))[1]["epoch"] == 1


# ---------------------------------------------------------------- --eval-only --model-dir (issue 18.5)
def test_eval_only_without_load_epoch_loads_the_last_checkpoint_when_there_is_no_best(demo_root, tmp_path, capsys):
    trained = build_demo_trainer(demo_root, tmp_path / "run", opts=FAST + ("OPTIM.MAX_EPOCH", 2,
                                                                          "TRAIN.CHECKPOINT_FREQ", 1))
    trained.train()  # TEST.FINAL_MODEL last_step: no validation, no model-best.pth.tar
    evaluation = build_demo_trainer(demo_root, tmp_path / "eval", opts=FAST)
    evaluation.load_model(str(tmp_path / "run"))
    out = capsys.readouterr().out
    assert "No model-best.pth.tar" in out and 'model.pth.tar-2 (--load-epoch N selects another)' in out
    torch.testing.assert_close(evaluation.model.prompt_learner.ctx, trained.model.prompt_learner.ctx)

    with pytest.raises(FileNotFoundError, match=r'Model not found at ".*model.pth.tar-5"\. The checkpoints in ".*'
                                                r'prompt_learner": model.pth.tar-2, model.pth.tar-1 '
                                                r"\(--load-epoch 2 / 1 "
                                                r"selects model.pth.tar-2, model.pth.tar-1\)"):
        evaluation.load_model(str(tmp_path / "run"), epoch=5)
    with pytest.raises(FileNotFoundError, match=r'No checkpoint folder ".*nothing_here/prompt_learner": --model-dir '
                                                r"must be the --output-dir of a training run of CoOp"):
        evaluation.load_model(str(tmp_path / "nothing_here"))


# ---------------------------------------------------------------- other code's layouts (issue 18.4)
def write_released(folder, state_dict, epoch=5):
    os.makedirs(folder, exist_ok=True)
    # What Dassl's save_checkpoint writes (a plain scheduler state here, so no trust is needed).
    torch.save({"state_dict": state_dict, "epoch": epoch, "optimizer": {"state": {}, "param_groups": []},
                "scheduler": {"last_epoch": epoch}, "val_result": None}, os.path.join(folder, f"model.pth.tar-{epoch}"))


def random_like(state):
    torch.manual_seed(3)
    return {k: torch.randn_like(v) for k, v in state.items()}


def frozen_clip_keys(trainer):
    """A few of the frozen CLIP tensors a whole-CustomCLIP checkpoint also holds."""
    clip = trainer.model.backbone.clip
    return {"image_encoder.conv1.weight": clip.visual.conv1.weight.detach().clone(),
            "text_encoder.positional_embedding": clip.positional_embedding.detach().clone(),
            "text_encoder.ln_final.weight": clip.ln_final.weight.detach().clone(),
            "logit_scale": clip.logit_scale.detach().clone()}


def test_maples_released_checkpoint_loads(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path / "eval", trainer="MaPLe", opts=FAST)
    learned = random_like(trainer.model.prompt_learner.state_dict())
    n_cls = trainer.num_classes
    # MaPLe registers its whole CustomCLIP as "MultiModalPromptLearner".
    saved = {f"prompt_learner.{k}": v for k, v in learned.items()}
    saved["prompt_learner.token_prefix"] = torch.zeros(n_cls, 1, 64)
    saved["prompt_learner.token_suffix"] = torch.zeros(n_cls, 72, 64)
    saved.update(frozen_clip_keys(trainer))
    write_released(tmp_path / "maple_output" / "MultiModalPromptLearner", saved)
    trainer.load_model(str(tmp_path / "maple_output"), epoch=5)
    for key, value in trainer.model.prompt_learner.state_dict().items():
        torch.testing.assert_close(value, learned[key])


def study_name(key):
    """The study's name of a BiDirMaPLe learner key: its CrossModalMappingNetwork holds the MLP as
    `mapping` (`l2v_mappings.0.0.weight` here is `l2v_mappings.0.mapping.0.weight` there)."""
    parts = key.split(".")
    if parts[0] in ("l2v_mappings", "v2l_mappings"):
        parts.insert(2, "mapping")
    return "prompt_learner." + ".".join(parts)


def test_the_study_s_bidir_maple_checkpoint_loads(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path / "eval", trainer="BiDirMaPLe", opts=FAST)
    learned = random_like(trainer.model.prompt_learner.state_dict())
    saved = {study_name(k): v for k, v in learned.items()}
    assert "prompt_learner.l2v_mappings.0.mapping.0.weight" in saved
    saved.update(frozen_clip_keys(trainer))
    write_released(tmp_path / "study_output" / "MultiModalPromptLearner", saved)
    trainer.load_model(str(tmp_path / "study_output"), epoch=5)
    for key, value in trainer.model.prompt_learner.state_dict().items():
        torch.testing.assert_close(value, learned[key])


def test_cocoops_checkpoint_loads(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path / "eval", trainer="CoCoOp", opts=FAST)
    learned = random_like(trainer.model.prompt_learner.state_dict())
    assert {"ctx", "meta_net.linear1.weight", "meta_net.linear2.bias"} <= set(learned)  # CoCoOp's names
    saved = dict(learned, token_prefix=torch.zeros(10, 1, 64), token_suffix=torch.zeros(10, 72, 64))
    write_released(tmp_path / "cocoop_output" / "prompt_learner", saved, epoch=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing class-specific, so nothing to warn about
        trainer.load_model(str(tmp_path / "cocoop_output"), epoch=10)
    for key, value in trainer.model.prompt_learner.state_dict().items():
        torch.testing.assert_close(value, learned[key])


def test_a_released_layout_names_keys_that_are_neither_the_learner_nor_the_frozen_clip(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path / "eval", trainer="MaPLe", opts=FAST)
    saved = {f"prompt_learner.{k}": v for k, v in trainer.model.prompt_learner.state_dict().items()}
    saved["prompt_learner.extra_gate.weight"] = torch.zeros(3)
    write_released(tmp_path / "maple_output" / "MultiModalPromptLearner", saved)
    with pytest.raises(ValueError, match=r"unexpected: \['extra_gate.weight'\]"):
        trainer.load_model(str(tmp_path / "maple_output"), epoch=5)
