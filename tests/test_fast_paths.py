"""Issue 7: every fast path equals its reference path (logits and gradients) on the tiny backbone,
the image-feature cache is keyed by everything its content depends on, and a damaged cache file
is rebuilt, never trusted."""
import os

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from conftest import build_demo_trainer
from trainers import feature_cache as fc
from trainers.backbone import ClipBackbone, load_clip
from trainers.cocoop import CoCoOpCLIP, CoCoOpPromptLearner
from trainers.data.datum import Datum
from trainers.data.image_cache import ImageCache, shared_leading_resize
from trainers.prompting import ClassPromptTemplate, init_context

CLASSNAMES = ["circle", "square", "hot air balloon", "star"]


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return ClipBackbone(load_clip("gatescope-tiny", ""))


def grads(output, params):
    return torch.autograd.grad(output.square().sum(), params)


def assert_same(fast, ref, params_fast, params_ref=None):
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(fast, params_fast), grads(ref, params_ref or params_fast)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ EOT truncation
def test_encode_text_truncates_77_positions_exactly(backbone):
    torch.manual_seed(1)
    ctx, prefix, n_ctx = init_context(backbone, 16)
    full = ClassPromptTemplate(backbone, CLASSNAMES, n_ctx, prefix, truncate=False)
    ctx.requires_grad_()
    prompts = full(ctx)
    assert prompts.shape[1] == backbone.context_length
    assert backbone.eot_truncation_length(prompts, full.eot_idx) == int(full.eot_idx.max()) + 1 < 77
    fast = backbone.encode_text(prompts, full.eot_idx)
    ref = backbone.encode_text(prompts, full.eot_idx, truncate=False)
    assert_same(fast, ref, [ctx])


def test_token_path_with_truncation_equals_open_clip(backbone):
    tokens = backbone.tokenize(["a photo of a dog.", "x"])
    with torch.no_grad():
        torch.testing.assert_close(backbone.encode_text_tokens(tokens), backbone.clip.encode_text(tokens),
                                   rtol=1e-5, atol=1e-6)


def test_no_truncation_for_deep_prompts_placed_from_the_end(backbone):
    from trainers.backbone import DeepPrompts
    tokens = backbone.tokenize(["a b"])
    x = backbone.token_embedding(tokens)
    deep = DeepPrompts([torch.zeros(2, backbone.ctx_dim)], start=None)
    assert backbone.eot_truncation_length(x, backbone.eot_positions(tokens), deep) == 77


# ------------------------------------------------------------------ CoCoOp batched encoding
@pytest.mark.parametrize("truncate", [True, False])
def test_cocoop_batched_chunked_equals_loop_with_and_without_truncation(backbone, truncate):
    torch.manual_seed(0)
    model = CoCoOpCLIP(CoCoOpPromptLearner(backbone, CLASSNAMES, 4), backbone)
    if not truncate:  # the reference: all 77 positions in the loop
        model.prompt_learner.template = ClassPromptTemplate(backbone, CLASSNAMES, 4, truncate=False)
    model.max_prompts = 5
    images = torch.randn(4, 3, 32, 32)
    params = [p for p in model.prompt_learner.parameters() if p.requires_grad]
    fast = model(images)
    ref = model.forward_per_image(images)
    assert_same(fast, ref, params)


# ------------------------------------------------------------------ cached image features
@pytest.mark.parametrize("name", ["CoOp", "CoCoOp", "CoOpGated", "CoCoOpGated"])
def test_models_give_the_same_logits_and_gradients_from_cached_features(demo_root, tmp_path, name):
    trainer = build_demo_trainer(demo_root, tmp_path, name, opts=("DATASET.NUM_SHOTS", 1))
    model = trainer.model.train()
    images = next(iter(trainer.train_loader_x))["img"][:4]
    with torch.no_grad():
        features = model.backbone.encode_image(images)
    params = [p for p in model.prompt_learner.parameters() if p.requires_grad]
    assert_same(model(features), model(images), params)


def train_one_epoch(demo_root, out, name, *opts):
    trainer = build_demo_trainer(demo_root, out, name, opts=(
        "OPTIM.MAX_EPOCH", 1, "DATASET.NUM_SHOTS", 4, "TEST.NO_TEST", True, *opts))
    trainer.train()
    return trainer


@pytest.mark.parametrize("name", ["CoOp", "CoCoOpGated"])
def test_training_with_the_cache_equals_training_without(demo_root, tmp_path, name):
    cached = train_one_epoch(demo_root, tmp_path / "a", name, "DATALOADER.FEATURE_CACHE.DIR", tmp_path / "fc")
    plain = train_one_epoch(demo_root, tmp_path / "b", name, "DATALOADER.FEATURE_CACHE.ENABLED", False)
    assert cached.feature_cache_path is not None and os.path.isfile(cached.feature_cache_path)
    assert plain.feature_cache_path is None
    for (k, a), (_, b) in zip(cached.model.prompt_learner.state_dict().items(),
                              plain.model.prompt_learner.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("views", [0, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_cached_feature_loader_yields_what_a_dataloader_would(items, views, drop_last):
    data = items * 3  # 9 items, batches of 4: a short last batch
    features = torch.randn(len(data), *((views,) if views else ()), 5)
    sampler = torch.utils.data.RandomSampler(data)
    fast = fc.CachedFeatureLoader(fc.CachedFeatureDataset(data, features, seed=7), sampler, 4, drop_last)
    ref = torch.utils.data.DataLoader(fc.CachedFeatureDataset(data, features, seed=7), batch_size=4,
                                      sampler=sampler, drop_last=drop_last)
    torch.manual_seed(0)
    got = list(fast)
    after_fast = torch.rand(1)
    torch.manual_seed(0)
    want = list(ref)
    assert torch.equal(torch.rand(1), after_fast)  # the global RNG advanced the same way
    assert len(got) == len(want) == len(fast) == len(ref) == (2 if drop_last else 3)
    for a, b in zip(got, want):
        assert a.keys() == b.keys() and a["impath"] == b["impath"]
        for key in ("label", "domain", "index"):
            assert torch.equal(a[key], b[key]), key
        if views:  # each item gets one of its stored views; which one is the loader's own draw
            stored = features[a["index"]]
            assert all(any(torch.equal(f, v) for v in s) for f, s in zip(a["img"], stored))
        else:
            assert torch.equal(a["img"], b["img"])


def test_random_transform_uses_no_cache_unless_a_bank_is_asked_for(demo_root, tmp_path):
    opts = ("DATALOADER.FEATURE_CACHE.DIR", tmp_path / "fc", "INPUT.TRANSFORMS", ["random_flip", "normalize"])
    plain = train_one_epoch(demo_root, tmp_path / "a", "CoOp", *opts)
    assert plain.feature_cache_path is None
    bank = train_one_epoch(demo_root, tmp_path / "b", "CoOp", *opts, "DATALOADER.FEATURE_CACHE.VIEWS", 3)
    features, reason = fc.load_features(bank.feature_cache_path, torch.load(
        bank.feature_cache_path, weights_only=True)["key"])
    assert reason is None and features.shape[:2] == (len(bank.dm.dataset.train_x), 3)
    assert not torch.allclose(features[:, 0], features[:, 1])  # the views differ (random flips)


def test_corrupted_cache_file_is_rebuilt(demo_root, tmp_path):
    opts = ("DATALOADER.FEATURE_CACHE.DIR", tmp_path / "fc")
    first = train_one_epoch(demo_root, tmp_path / "a", "CoOp", *opts)
    path = first.feature_cache_path
    good = torch.load(path, weights_only=True)
    # A flipped value inside the stored features: the file still loads, the checksum fails.
    damaged = dict(good, features=good["features"].clone())
    damaged["features"][0, 0] += 1.0
    torch.save(damaged, path)
    assert fc.load_features(path, good["key"])[0] is None
    with pytest.warns(UserWarning, match="rebuilt"):
        train_one_epoch(demo_root, tmp_path / "b", "CoOp", *opts)
    torch.testing.assert_close(torch.load(path, weights_only=True)["features"], good["features"])
    # A truncated file: unreadable, rebuilt.
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.warns(UserWarning, match="unreadable"):
        train_one_epoch(demo_root, tmp_path / "c", "CoOp", *opts)
    assert fc.load_features(path, good["key"])[0] is not None


@pytest.fixture
def items(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        Image.new("RGB", (8, 6), (i * 40, 0, 0)).save(p)
        paths.append(str(p))
    return [Datum(impath=p, label=i, domain=0) for i, p in enumerate(paths)]


def test_cache_key_changes_with_each_of_its_inputs(items, tmp_path):
    tfm = T.Compose([T.Resize((32, 32)), T.ToTensor()])
    base = dict(backbone_name="gatescope-tiny", weights="w1", dtype=torch.float32, transform=tfm,
                input_size=(32, 32), data_source=items, views=0, seed=1)
    key = fc.key_digest(fc.cache_key(**base))
    assert fc.key_digest(fc.cache_key(**base)) == key  # stable
    assert fc.key_digest(fc.cache_key(**dict(base, seed=2))) == key  # an exact cache is seed-free

    def changed(**kw):
        return fc.key_digest(fc.cache_key(**dict(base, **kw))) != key
    assert changed(backbone_name="ViT-B/16")
    assert changed(weights="w2")
    assert changed(dtype=torch.float16)
    assert changed(transform=T.Compose([T.Resize((32, 32), interpolation=T.InterpolationMode.BICUBIC),
                                        T.ToTensor()]))
    assert changed(input_size=(64, 64))
    assert changed(data_source=items[:2])
    assert changed(data_source=[Datum(impath=d.impath, label=(d.label + 1) % 3, domain=0) for d in items])
    assert changed(views=2)
    bank = dict(base, views=2)
    assert fc.cache_key(**bank) != fc.cache_key(**dict(bank, seed=2))
    # The same path with new pixels (size / mtime change).
    Image.new("RGB", (9, 6)).save(items[0].impath)
    assert changed()


def test_weights_fingerprint_sees_one_changed_value(backbone):
    before = fc.weights_fingerprint(backbone.clip.visual)
    p = next(backbone.clip.visual.parameters())
    with torch.no_grad():
        p.view(-1)[0] += 1e-3
        after = fc.weights_fingerprint(backbone.clip.visual)
        p.view(-1)[0] -= 1e-3
    assert before != after


def test_transform_description_is_free_of_memory_addresses():
    from trainers.data.transforms import InstanceNormalization
    text = str(fc.describe_transform(T.Compose([T.ToTensor(), InstanceNormalization()])))
    assert " at 0x" not in text and "InstanceNormalization" in text
    assert fc.is_deterministic(T.Compose([T.Resize(4), T.ToTensor(), InstanceNormalization()]))
    assert not fc.is_deterministic(T.Compose([T.RandomHorizontalFlip(), T.ToTensor()]))


# ------------------------------------------------------------------ decoded-image cache
@pytest.mark.parametrize("size", [(32, 32), 24, (20, 28)])
def test_image_cache_gives_the_transform_the_same_pixels(tmp_path, size):
    path = tmp_path / "a.jpg"
    torch.manual_seed(0)
    Image.fromarray((torch.rand(37, 53, 3) * 255).byte().numpy()).save(path)
    tfm = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(20), T.ToTensor()])
    read = lambda p: Image.open(p).convert("RGB")  # noqa: E731
    cache = ImageCache(2 ** 20, shared_leading_resize([tfm]))
    first = tfm(cache.read(str(path), read))
    second = tfm(cache.read(str(path), read))  # from the cache
    assert len(cache.entries) == 1
    torch.testing.assert_close(first, tfm(read(path)), rtol=0, atol=0)
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_image_cache_rereads_a_rewritten_file_and_keeps_its_budget(tmp_path):
    path = str(tmp_path / "a.png")
    Image.new("RGB", (4, 4), (255, 0, 0)).save(path)
    read = lambda p: Image.open(p).convert("RGB")  # noqa: E731
    cache = ImageCache(1000)
    assert cache.read(path, read).getpixel((0, 0)) == (255, 0, 0)
    Image.new("RGB", (5, 4), (0, 255, 0)).save(path)
    assert cache.read(path, read).getpixel((0, 0)) == (0, 255, 0)
    small = ImageCache(10)  # 4x4x3 = 48 bytes do not fit
    small.read(path, read)
    assert small.entries == {} and small.used_bytes == 0
    assert shared_leading_resize([T.Compose([T.Resize(4)]), T.Compose([T.Resize(5)])]) is None


def test_num_workers_loads_the_same_batches(demo_root, tmp_path):
    from trainers.data import DataManager
    trainer = build_demo_trainer(demo_root, tmp_path, "CoOp", opts=("DATASET.NUM_SHOTS", 1))
    cfg = trainer.cfg.clone()
    cfg.defrost()
    cfg.DATALOADER.NUM_WORKERS = 2
    loader = DataManager(cfg).test_loader
    assert loader.num_workers == 2
    batches = [b["img"] for b in loader]
    reference = [b["img"] for b in trainer.test_loader]
    for a, b in zip(batches, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
