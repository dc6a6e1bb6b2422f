"""What makes a gate route by domain (issue 14): patch-statistics conditioning and hard-EM."""
import json
import math
import os
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, build_demo_trainer, demo_args
from gates import hookimpl
from trainers.plugins import get_plugins
from trainers.hard_em import hard_em_assignment, hard_em_losses, option_log_likelihood

FAST = ("OPTIM.MAX_EPOCH", 1, "DATASET.NUM_SHOTS", 2)
POOL = ("GATE.NAME", "softmax", "GATE.TARGET", "pool", "GATE.POOL_SIZE", 2)
HARD_EM = ("GATE.HARD_EM.ENABLED", True)


# ---------------------------------------------------------------- hard-EM, hand-computed
def test_hard_em_assignment_and_losses_hand_computed():
    # 2 images, 2 options, 2 classes. Under option 0 image 0 is sure of class 0 and image 1 is
    # undecided; option 1 the other way round.
    option_logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0]],
                                  [[0.0, 0.0], [0.0, 2.0]]])
    labels = torch.tensor([0, 1])
    sure, undecided = math.log(math.exp(2) / (math.exp(2) + 1)), math.log(0.5)
    torch.testing.assert_close(option_log_likelihood(option_logits, labels),
                               torch.tensor([[sure, undecided], [undecided, sure]]))
    # Without a prior each image goes to the option that explains its label best.
    assert hard_em_assignment(option_logits, labels).tolist() == [0, 1]
    # A router sure of option 1 for image 0 (log pi = log 0.99 vs log 0.01) outweighs the
    # likelihood gap (sure - undecided = 0.57 nats): the prior moves it.
    log_prior = torch.log(torch.tensor([[0.01, 0.99], [0.5, 0.5]]))
    assert hard_em_assignment(option_logits, labels, log_prior).tolist() == [1, 1]
    losses, assignment = hard_em_losses(option_logits, labels, log_prior, use_prior=False, router_weight=2.0)
    assert assignment.tolist() == [0, 1]
    torch.testing.assert_close(losses["ce"], torch.tensor(-sure))
    torch.testing.assert_close(losses["router"], torch.tensor(2.0 * -(math.log(0.01) + math.log(0.5)) / 2))


def test_hard_em_checks_shapes():
    with pytest.raises(ValueError, match=r"option_logits must be \(B, K, C\)"):
        option_log_likelihood(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"log_prior must be \(B, K\)"):
        hard_em_assignment(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long), torch.zeros(2, 2))


# ---------------------------------------------------------------- hard-EM in CoOpGated
def hard_em_trainer(demo_root, tmp_path, opts=()):
    return build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated", opts=FAST + POOL + HARD_EM + tuple(opts))


def test_hard_em_sends_each_images_gradient_to_its_chosen_prompt_only(demo_root, tmp_path):
    trainer = hard_em_trainer(demo_root, tmp_path)
    trainer.set_model_mode("train")
    batch = next(iter(trainer.train_loader_x))
    images, labels = batch["img"][:8], batch["label"][:8]
    ctx = trainer.model.prompt_learner.ctx  # (2, n_ctx, width): one context per prompt of the pool
    losses = trainer.compute_losses(trainer.model(images), labels)
    assignment = trainer.hard_em_assignment
    (grad,) = torch.autograd.grad(losses["ce"], ctx)
    # The reference: each prompt alone, on the images assigned to it (the mean over the batch).
    learner, backbone = trainer.model.prompt_learner, trainer.model.backbone
    features = backbone.encode_image(images)
    for k in range(2):
        mine = assignment == k
        text = F.normalize(backbone.encode_text(learner.template(ctx[k], learner.position),
                                                learner.template.eot_idx), dim=-1)
        logits = backbone.logit_scale.exp() * F.normalize(features[mine], dim=-1) @ text.t()
        loss_k = F.cross_entropy(logits, labels[mine], reduction="sum") / len(labels) if mine.any() else None
        expected = torch.autograd.grad(loss_k, ctx)[0][k] if loss_k is not None else torch.zeros_like(ctx[k])
        torch.testing.assert_close(grad[k], expected, rtol=1e-4, atol=1e-7)
    # The soft mixture, by contrast, sends every image's gradient to both prompts.
    trainer.cfg.defrost()
    trainer.cfg.GATE.HARD_EM.ENABLED = False
    mixture = trainer.compute_losses(trainer.model(images), labels)
    (mixed,) = torch.autograd.grad(mixture["ce"], ctx)
    assert not torch.allclose(mixed, grad, rtol=1e-3, atol=1e-6)


def test_hard_em_router_loss_trains_the_gate_only(demo_root, tmp_path):
    trainer = hard_em_trainer(demo_root, tmp_path)
    trainer.set_model_mode("train")
    batch = next(iter(trainer.train_loader_x))
    losses = trainer.compute_losses(trainer.model(batch["img"]), batch["label"])
    assert {"ce", "hard_em_router"} <= set(losses)
    learner = trainer.model.prompt_learner
    gate_params = list(trainer.gate_head.parameters())
    grads = torch.autograd.grad(losses["hard_em_router"], [learner.ctx, *gate_params], allow_unused=True)
    assert grads[0] is None or not grads[0].any()
    assert all(g is not None and g.abs().sum() > 0 for g in grads[1:])
    # Its value is the cross-entropy of the gate's softmax against the assignment.
    logits = trainer.gate_head.gate.last_logits
    expected = F.cross_entropy(logits, trainer.hard_em_assignment)
    torch.testing.assert_close(losses["hard_em_router"], expected)


def test_a_hard_em_router_is_declared_trained_by_its_own_loss(demo_root, tmp_path):
    """The task loss never reaches a hard-EM router (its choice is an argmax): the gate contract's
    no_task_grad_params says so, so the verdict reads no imbalance into its zero task gradient."""
    gate = hard_em_trainer(demo_root, tmp_path).gate_head.gate
    assert set(gate.no_task_grad_params) == {name for name, _ in gate.named_parameters()} != set()


def test_hard_em_needs_a_simplex_target_and_a_softmax_router(demo_root, tmp_path):
    with pytest.raises(ValueError, match="GATE.HARD_EM chooses one option per image, so it needs GATE.TARGET "
                                         "prefix or pool, not 'length'"):
        build_demo_trainer(demo_root, tmp_path / "a", trainer="CoOpGated", opts=FAST + HARD_EM)
    with pytest.raises(ValueError, match="gate 'topk' has activation 'topk_softmax'; use GATE.NAME softmax"):
        build_demo_trainer(demo_root, tmp_path / "b", trainer="CoOpGated",
                           opts=FAST + ("GATE.NAME", "topk", "GATE.TARGET", "pool") + HARD_EM)


# ---------------------------------------------------------------- patch_mean conditioning
class CondRecorder:
    def __init__(self):
        self.conds = []

    @hookimpl
    def gate_output(self, context, name, output, cond, phase):
        self.conds.append(cond.detach())


def test_patch_mean_condition_reads_the_patch_embedding_and_skips_the_feature_cache(demo_root, tmp_path, capsys):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated",
                                 opts=FAST + POOL + ("GATE.COND", "patch_mean"))
    backbone = trainer.model.backbone
    assert trainer.gate_head.gate.net[-1].in_features == backbone.vis_dim != backbone.embed_dim
    images = next(iter(trainer.train_loader_x))["img"][:4]
    recorder = CondRecorder()
    plugins = get_plugins()
    plugins.pm.register(recorder, name="cond-recorder")
    try:
        trainer.set_model_mode("train")
        trainer.model(images)
    finally:
        plugins.pm.unregister(name="cond-recorder")
    patches = backbone.clip.visual.conv1(images)  # (B, width, grid, grid)
    torch.testing.assert_close(recorder.conds[-1], patches.flatten(2).mean(-1))
    capsys.readouterr()
    trainer.train()
    assert "Image-feature cache not used: GATE.COND patch_mean reads the images" in capsys.readouterr().out


def read_gate_summary(output_dir):
    with open(osp.join(output_dir, "diagnostics", "summary.json"), encoding="utf-8") as f:
        return next(iter(json.load(f)["gates"].values()))


ROUTING_CONFIG = os.path.join(REPO, "configs", "trainers", "CoOpGated", "demo_pool2_patchmean_hardem.yaml")


@pytest.mark.parametrize("cond,routes", [("patch_mean", True), ("image_feature", False)])
def test_on_the_multidomain_task_the_gate_routes_by_domain_from_patch_statistics(demo_root, tmp_path, cond, routes):
    """The regime of the routing config (issue 14): on the multi-domain task a hard-EM pool gate
    conditioned on the patch statistics chooses its prompt by domain (mutual information with the
    domain near ln 2) and replacing it by its training mean costs accuracy; from the last image
    feature, where the domain is a minor direction, it does not route."""
    import trainers
    from trainers.engine import build_trainer
    from trainers.engine.utils import set_random_seed
    cfg = trainers.setup_cfg(demo_args(demo_root, tmp_path, "CoOpGated", config=ROUTING_CONFIG,
                                       opts=("DATASET.NAME", "GatescopeMultiDomain", "OPTIM.MAX_EPOCH", 10,
                                             "GATE.COND", cond)))
    assert cfg.DATASET.NAME == "GatescopeMultiDomain" and cfg.GATE.HARD_EM.ENABLED
    set_random_seed(cfg.SEED)
    trainer = build_trainer(cfg)
    trainer.train()
    gate = read_gate_summary(trainer.output_dir)
    if routes:
        assert gate["mi_domain"] > 0.5 and gate["delta_acc"] > 0
    else:
        assert gate["mi_domain"] < 0.2

# ---------------------------------------------------------------- REMEDY.CLUSTER_INIT
def test_kmeans_finds_two_separated_blobs_and_their_means():
    from gates.remedies.cluster_init import kmeans
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(20, 3, generator=generator) * 0.1 + torch.tensor([5.0, 0.0, 0.0])
    b = torch.randn(30, 3, generator=generator) * 0.1 - torch.tensor([5.0, 0.0, 0.0])
    centroids, assignment, inertia = kmeans(torch.cat([a, b]), 2, n_init=3, seed=1)
    assert len(set(assignment[:20].tolist())) == 1 and len(set(assignment[20:].tolist())) == 1
    assert assignment[0] != assignment[20]
    torch.testing.assert_close(centroids[assignment[0]], a.double().mean(0))
    torch.testing.assert_close(centroids[assignment[20]], b.double().mean(0))
    expected = float(((a.double() - a.double().mean(0)) ** 2).sum() + ((b.double() - b.double().mean(0)) ** 2).sum())
    assert inertia == pytest.approx(expected)
    with pytest.raises(ValueError, match="needs at least 3 points"):
        kmeans(torch.zeros(2, 4), 3)


def test_nearest_centroid_weights_hand_computed():
    from gates.remedies.cluster_init import nearest_centroid_weights
    centroids = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    weight, bias = nearest_centroid_weights(centroids, spread=2.0, scale=1.0)
    torch.testing.assert_close(weight, torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(bias, torch.tensor([0.0, -4.0], dtype=torch.float64))
    x = torch.tensor([[1.9, 3.0], [2.1, -3.0]], dtype=torch.float64)  # just left / right of the midpoint 2
    assert (x @ weight.t() + bias).argmax(1).tolist() == [0, 1]


def test_cluster_init_starts_the_router_at_the_clusters_of_its_conditioning(demo_root, tmp_path):
    """Light and dark backgrounds are the clusters of the patch statistics: the router starts
    choosing, for every training image, the k-means cluster of its conditioning."""
    from gates.remedies import cluster_init
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated", opts=FAST + POOL + (
        "DATASET.NAME", "GatescopeMultiDomain", "DATASET.NUM_SHOTS", 8, "GATE.COND", "patch_mean",
        "REMEDY.CLUSTER_INIT.ENABLED", True))
    head = trainer.gate_head
    conds = cluster_init.training_conditions(trainer.hook_context, [head])[head]
    _, assignment, _ = cluster_init.kmeans(conds, 2, trainer.cfg.REMEDY.CLUSTER_INIT.N_INIT, trainer.cfg.SEED)
    rng = torch.random.get_rng_state()
    cluster_init.before_train(trainer.hook_context, trainer.cfg.REMEDY)
    assert torch.equal(torch.random.get_rng_state(), rng)  # the run's random stream is untouched
    with torch.no_grad():
        choices = head.gate(conds).argmax(1)
    assert torch.equal(choices, assignment)
    # ... and the clusters are the domains: on every training image the router picks by domain.
    from diagnostics.metrics import normalized_mutual_information
    batch = next(iter(torch.utils.data.DataLoader(trainer.train_loader_x.dataset, batch_size=1000)))
    with torch.no_grad():
        choices = head.gate(trainer.model.backbone.patch_mean(batch["img"])).argmax(1)
    assert normalized_mutual_information(choices, batch["domain"]) == pytest.approx(1.0)


def test_cluster_init_refuses_an_mlp_router_and_a_second_logit_setter(demo_root, tmp_path):
    pool = ("GATE.NAME", "softmax", "GATE.TARGET", "pool", "REMEDY.CLUSTER_INIT.ENABLED", True)
    hidden = build_demo_trainer(demo_root, tmp_path / "a", trainer="CoOpGated",
                                opts=FAST + pool + ("GATE.SOFTMAX.HIDDEN", 8))
    with pytest.raises(Exception, match="needs logits linear in the conditioning"):
        hidden.train()
    with pytest.raises(Exception, match="REMEDY.CLUSTER_INIT and REMEDY.INIT.ENABLED both set"):
        build_demo_trainer(demo_root, tmp_path / "b", trainer="CoOpGated",
                           opts=FAST + pool + ("REMEDY.INIT.ENABLED", True))  # refused by the config check
