"""Dassl's evaluators (`EVALUATOR_REGISTRY`, `build_evaluator`, `Classification`) and `compute_accuracy`.

The printed block and the result keys are Dassl's, because CoOp's `parse_test_res.py` and
similar scripts read `* accuracy: X%` from `log.txt`. Differences from Dassl:
- macro F1 and the confusion matrix are computed here (numpy), so scikit-learn is not needed;
- `cmat.pt` holds a torch tensor (Dassl's holds a numpy array), so it loads with
  `torch.load(weights_only=True)`.
"""
import os.path as osp
from collections import OrderedDict, defaultdict

import numpy as np
import torch

from .registry import Registry
from .utils import mkdir_if_missing

__all__ = ["EVALUATOR_REGISTRY", "build_evaluator", "EvaluatorBase", "Classification", "compute_accuracy",
           "macro_f1_score", "confusion_matrix"]

EVALUATOR_REGISTRY = Registry("EVALUATOR")


def build_evaluator(cfg, **kwargs):
    """The evaluator named by `cfg.TEST.EVALUATOR`, built as `Evaluator(cfg, **kwargs)` (e.g. lab2cname)."""
    name = cfg.TEST.EVALUATOR
    if name not in EVALUATOR_REGISTRY:
        raise KeyError(f'Unknown evaluator "{name}" (TEST.EVALUATOR). Available evaluators: '
                       f"{', '.join(sorted(EVALUATOR_REGISTRY.registered_names()))}")
    if cfg.VERBOSE:
        print(f"Loading evaluator: {name}")
    return EVALUATOR_REGISTRY.get(name)(cfg, **kwargs)


class EvaluatorBase:
    """Accumulates model outputs over a test set: `reset()`, `process(mo, gt)` per batch, `evaluate()`."""

    def __init__(self, cfg):
        self.cfg = cfg

    def reset(self):
        raise NotImplementedError

    def process(self, mo, gt):
        raise NotImplementedError

    def evaluate(self):
        raise NotImplementedError


def macro_f1_score(y_true, y_pred, labels=None):
    """Unweighted mean over `labels` of F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c), in [0, 1].

    `labels` defaults to the classes present in `y_true` (what Dassl passes to scikit-learn's
    `f1_score(average="macro", labels=np.unique(y_true))`), so a class that is only ever
    *predicted* lowers the precision of the true classes but adds no F1 term of its own.
    A class with no TP, FP or FN contributes 0 (scikit-learn's zero_division default).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if labels is None:
        labels = np.unique(y_true)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        return 0.0
    scores = []
    for c in labels:
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom > 0 else 0.0)
    return float(np.mean(scores))


def confusion_matrix(y_true, y_pred, normalize=None):
    """Counts `C[i, j]` = samples of class `labels[i]` predicted as `labels[j]`; returns (C, labels).

    `labels` is the sorted union of both label lists (as scikit-learn). `normalize="true"` divides
    each row by its count (rows of absent classes stay 0).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    labels = np.union1d(y_true, y_pred)
    index = {int(c): i for i, c in enumerate(labels)}
    cmat = np.zeros((len(labels), len(labels)), dtype=np.float64)
    for t, p in zip(y_true, y_pred):
        cmat[index[int(t)], index[int(p)]] += 1
    if normalize == "true":
        rows = cmat.sum(axis=1, keepdims=True)
        cmat = np.divide(cmat, rows, out=np.zeros_like(cmat), where=rows > 0)
    elif normalize is not None:
        raise ValueError(f'normalize must be None or "true"; got {normalize!r}')
    return cmat, labels


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    """Accuracy, error rate and macro F1 (percent) of argmax predictions; Dassl's printout.

    `evaluate()` returns an OrderedDict with `accuracy` (first: `trainer.test()` returns it),
    `error_rate` (Dassl's key; printed as `* error:`), `macro_f1`, and `perclass_accuracy` (mean of
    per-class accuracies) when `TEST.PER_CLASS_RESULT`. With `TEST.COMPUTE_CMAT` the row-normalised
    confusion matrix is saved to `OUTPUT_DIR/cmat.pt`.
    """

    def __init__(self, cfg, lab2cname=None, **kwargs):
        super().__init__(cfg)
        self._lab2cname = lab2cname
        self._per_class = bool(cfg.TEST.PER_CLASS_RESULT)
        if self._per_class and lab2cname is None:
            raise ValueError("TEST.PER_CLASS_RESULT needs class names: build the evaluator with "
                             "lab2cname={label: classname}")
        self.reset()

    def reset(self):
        self._correct = 0
        self._total = 0
        self._y_true = []
        self._y_pred = []
        self._per_class_res = defaultdict(list) if self._per_class else None

    def process(self, mo, gt):
        """Add a batch: `mo` logits or scores of shape (N, C), `gt` integer labels of shape (N,)."""
        if mo.dim() != 2 or gt.dim() != 1 or mo.shape[0] != gt.shape[0]:
            raise ValueError(f"Classification.process expects outputs (N, C) and labels (N,); got "
                             f"{tuple(mo.shape)} and {tuple(gt.shape)}")
        pred = mo.argmax(dim=1)
        gt = gt.to(pred.device)
        matches = pred.eq(gt)
        self._correct += int(matches.sum().item())
        self._total += gt.shape[0]
        true_list = gt.cpu().tolist()
        self._y_true.extend(true_list)
        self._y_pred.extend(pred.cpu().tolist())
        if self._per_class_res is not None:
            for label, match in zip(true_list, matches.cpu().tolist()):
                self._per_class_res[label].append(int(match))

    def evaluate(self):
        if self._total == 0:
            raise RuntimeError("Classification.evaluate() was called before any process(); "
                               "the evaluation loader gave no batches")
        results = OrderedDict()
        acc = 100.0 * self._correct / self._total
        err = 100.0 - acc
        macro_f1 = 100.0 * macro_f1_score(self._y_true, self._y_pred)
        results["accuracy"] = acc
        results["error_rate"] = err
        results["macro_f1"] = macro_f1
        print(
            "=> result\n"
            f"* total: {self._total:,}\n"
            f"* correct: {self._correct:,}\n"
            f"* accuracy: {acc:.1f}%\n"
            f"* error: {err:.1f}%\n"
            f"* macro_f1: {macro_f1:.1f}%"
        )

        if self._per_class_res is not None:
            print("=> per-class result")
            accs = []
            for label in sorted(self._per_class_res):
                res = self._per_class_res[label]
                correct, total = sum(res), len(res)
                class_acc = 100.0 * correct / total
                accs.append(class_acc)
                classname = self._lab2cname.get(label, "?") if isinstance(self._lab2cname, dict) \
                    else self._lab2cname[label]
                print(f"* class: {label} ({classname})\t"
                      f"total: {total:,}\tcorrect: {correct:,}\tacc: {class_acc:.1f}%")
            mean_acc = float(np.mean(accs))
            print(f"* average: {mean_acc:.1f}%")
            results["perclass_accuracy"] = mean_acc

        if self.cfg.TEST.COMPUTE_CMAT:
            cmat, _ = confusion_matrix(self._y_true, self._y_pred, normalize="true")
            mkdir_if_missing(self.cfg.OUTPUT_DIR)
            save_path = osp.join(self.cfg.OUTPUT_DIR, "cmat.pt")
            torch.save(torch.from_numpy(cmat), save_path)
            print(f"Confusion matrix is saved to {save_path}")
        return results


def compute_accuracy(output, target, topk=(1,)):
    """Top-k accuracies in percent, one 1-element tensor per k (Dassl's `dassl.metrics.compute_accuracy`).

    acc_k = 100 * (number of samples whose label is among the k highest outputs) / N.
    `output` is (N, C) (or a tuple/list whose first element is), `target` is (N,).
    """
    if isinstance(output, (tuple, list)):
        output = output[0]
    maxk = max(topk)
    batch_size = target.size(0)
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand(maxk, -1))
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True).mul_(100.0 / batch_size) for k in topk]
