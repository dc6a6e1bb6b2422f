"""Every learnable tensor of every trainer sits in exactly one explicitly built optimizer group.

Dassl's staged learning rate collects the parameters of child modules only, so a parameter held
directly by a module (CoOp's `ctx`) silently falls out of it; here the groups are built
explicitly and checked against the model's learnable tensors.
"""
import glob
import os

import pytest
import torch
import torch.nn as nn

from conftest import REPO, build_demo_trainer
from trainers.prompt_trainer import check_param_groups

DEMO_TRAINERS = sorted(os.path.basename(os.path.dirname(p))
                       for p in glob.glob(os.path.join(REPO, "configs", "trainers", "*", "demo.yaml")))


def test_every_registered_trainer_has_a_demo_config():
    import trainers  # noqa: F401
    from trainers.engine import TRAINER_REGISTRY

    assert set(TRAINER_REGISTRY.registered_names()) == set(DEMO_TRAINERS)


@pytest.mark.parametrize("name", DEMO_TRAINERS)
def test_optimizer_groups_cover_every_learnable_tensor_once(demo_root, tmp_path, name):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer=name, opts=("DATASET.NUM_SHOTS", 1))
    learnable = {id(p): n for n, p in trainer.model.named_parameters() if p.requires_grad}
    if trainer.optim is None:  # zero-shot CLIP: nothing to learn, no optimizer
        assert not learnable
        return
    in_optim = [id(p) for group in trainer.optim.param_groups for p in group["params"]]
    assert len(in_optim) == len(set(in_optim)), "a tensor is in two groups"
    assert set(in_optim) == set(learnable), {learnable[i] for i in set(learnable) - set(in_optim)}
    assert not any(p.requires_grad for n, p in trainer.model.named_parameters()
                   if not n.startswith("prompt_learner."))  # the backbone stays frozen
    names = [g["name"] for g in trainer.optim.param_groups]
    gated = hasattr(trainer, "gate_heads") and any(True for h in trainer.gate_heads for _ in h.parameters())
    assert names == (["prompt", "gate"] if gated else ["prompt"])


def test_a_tensor_left_out_of_the_groups_is_named():
    model = nn.Module()
    model.ctx = nn.Parameter(torch.zeros(2, 2))  # held directly by the module, as CoOp's context
    model.head = nn.Linear(2, 2)
    groups = [{"name": "prompt", "params": list(model.head.parameters())}]
    with pytest.raises(ValueError, match=r"in no optimizer parameter group: \['ctx'\]"):
        check_param_groups(model, groups)
    with pytest.raises(ValueError, match="in both parameter groups 'prompt' and 'gate'"):
        check_param_groups(model, groups + [{"name": "gate", "params": [model.ctx, model.head.bias]}])
