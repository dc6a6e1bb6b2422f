"""Dassl's Classification evaluator and compute_accuracy on hand-computed cases."""
import pytest
import torch
import torch.nn.functional as F

from trainers.engine.config import get_cfg_default
from trainers.engine.evaluator import (
    EVALUATOR_REGISTRY,
    Classification,
    build_evaluator,
    compute_accuracy,
    macro_f1_score,
)

LAB2CNAME = {0: "cat", 1: "dog", 2: "fox", 3: "owl"}
# Class 3 is only ever predicted, never true.
GT = [0, 0, 0, 1, 1, 2, 2, 2]
PRED = [0, 0, 1, 1, 3, 2, 2, 0]
# F1_c = 2TP / (2TP + FP + FN): class 0: 4/6, class 1: 2/4, class 2: 4/5; Dassl averages over
# the classes present in the labels (0, 1, 2): (2/3 + 1/2 + 4/5) / 3 = 0.655556.
MACRO_F1 = (2 / 3 + 1 / 2 + 4 / 5) / 3


def cfg_with(tmp_path=None, **test_keys):
    cfg = get_cfg_default()
    cfg.VERBOSE = False
    for key, value in test_keys.items():
        setattr(cfg.TEST, key, value)
    if tmp_path is not None:
        cfg.OUTPUT_DIR = str(tmp_path / "out")
    return cfg


def feed(evaluator, gt, pred, num_classes=4, batch=3):
    for start in range(0, len(gt), batch):
        logits = F.one_hot(torch.tensor(pred[start:start + batch]), num_classes).float()
        evaluator.process(logits, torch.tensor(gt[start:start + batch]))


def test_macro_f1_by_hand():
    assert macro_f1_score(GT, PRED) == pytest.approx(MACRO_F1)
    assert macro_f1_score(GT, PRED, labels=[0, 1, 2, 3]) == pytest.approx((2 / 3 + 1 / 2 + 4 / 5 + 0) / 4)
    assert macro_f1_score([1, 1], [1, 1]) == 1.0


def test_result_block_and_values(capsys):
    evaluator = build_evaluator(cfg_with(), lab2cname=LAB2CNAME)
    assert isinstance(evaluator, Classification)
    feed(evaluator, GT, PRED)
    results = evaluator.evaluate()
    assert list(results) == ["accuracy", "error_rate", "macro_f1"]
    assert results["accuracy"] == 62.5 and results["error_rate"] == 37.5
    assert results["macro_f1"] == pytest.approx(100 * MACRO_F1)
    assert capsys.readouterr().out == (
        "=> result\n* total: 8\n* correct: 5\n* accuracy: 62.5%\n* error: 37.5%\n* macro_f1: 65.6%\n")


def test_thousands_separator_and_reset(capsys):
    evaluator = build_evaluator(cfg_with())
    feed(evaluator, GT, PRED)
    evaluator.reset()
    gt = [i % 4 for i in range(1000)]
    pred = [g if i < 900 else (g + 1) % 4 for i, g in enumerate(gt)]
    feed(evaluator, gt, pred, batch=128)
    results = evaluator.evaluate()
    out = capsys.readouterr().out
    assert "* total: 1,000\n* correct: 900\n* accuracy: 90.0%\n* error: 10.0%\n" in out
    assert results["accuracy"] == 90.0


def test_per_class_results_and_confusion_matrix(tmp_path, capsys):
    cfg = cfg_with(tmp_path, PER_CLASS_RESULT=True, COMPUTE_CMAT=True)
    evaluator = Classification(cfg, lab2cname=LAB2CNAME)
    feed(evaluator, GT, PRED)
    results = evaluator.evaluate()
    out = capsys.readouterr().out
    assert ("=> per-class result\n"
            "* class: 0 (cat)\ttotal: 3\tcorrect: 2\tacc: 66.7%\n"
            "* class: 1 (dog)\ttotal: 2\tcorrect: 1\tacc: 50.0%\n"
            "* class: 2 (fox)\ttotal: 3\tcorrect: 2\tacc: 66.7%\n"
            "* average: 61.1%\n") in out
    assert results["perclass_accuracy"] == pytest.approx((200 / 3 + 50 + 200 / 3) / 3)

    cmat = torch.load(tmp_path / "out" / "cmat.pt", weights_only=True)
    expected = torch.tensor([[2 / 3, 1 / 3, 0, 0],
                             [0, 1 / 2, 0, 1 / 2],
                             [1 / 3, 0, 2 / 3, 0],
                             [0, 0, 0, 0]], dtype=torch.float64)  # rows: true class, normalised
    assert torch.allclose(cmat, expected)


def test_errors_say_what_is_missing():
    with pytest.raises(ValueError, match="lab2cname"):
        Classification(cfg_with(PER_CLASS_RESULT=True))
    with pytest.raises(KeyError, match="Available evaluators: Classification"):
        build_evaluator(cfg_with(EVALUATOR="Retrieval"))
    with pytest.raises(RuntimeError, match="before any process"):
        Classification(cfg_with()).evaluate()
    assert "Classification" in EVALUATOR_REGISTRY.registered_names()


def test_compute_accuracy_topk():
    output = torch.tensor([[0.1, 0.7, 0.2],   # label 1: top-1
                           [0.5, 0.1, 0.4],   # label 2: top-2
                           [0.2, 0.3, 0.5],   # label 1: top-2
                           [0.9, 0.02, 0.08]])  # label 1: not in top-2
    target = torch.tensor([1, 2, 1, 1])
    top1, top2 = compute_accuracy(output, target, topk=(1, 2))
    assert top1.shape == (1,) and top1.item() == 25.0
    assert top2.item() == 75.0
    assert compute_accuracy((output, None), target)[0].item() == 25.0
