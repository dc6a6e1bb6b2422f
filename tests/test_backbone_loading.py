"""Backbone loading: names, QuickGELU choice, every checkpoint format, and offline errors.

Everything runs on `gatescope-tiny` (and a GELU twin registered here) so that no test needs
real weights or a network; tests that touch a tag check the error open_clip's failed offline
download turns into.
"""
import copy
import json
import socket
import warnings

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import open_clip
from open_clip.transformer import QuickGELU

from trainers.backbone import loader
from trainers.backbone.loader import (
    COOP_BACKBONE_NAMES,
    available_backbones,
    load_clip,
    openai_cache_file,
    resolve_backbone_name,
)

TINY = "gatescope-tiny"
# The tiny architecture with plain GELU: shows which activation each weight source selects
# (gatescope-tiny itself asks for QuickGELU in its config, so it cannot show the difference).
TINY_GELU = "gatescope-test-tiny-gelu"


@pytest.fixture(scope="module", autouse=True)
def tiny_gelu_config(tmp_path_factory):
    cfg = json.loads((loader.MODEL_CONFIG_DIR / f"{TINY}.json").read_text())
    cfg["quick_gelu"] = False
    path = tmp_path_factory.mktemp("configs") / f"{TINY_GELU}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or download fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for module in (open_clip.pretrained, open_clip.factory):
        monkeypatch.setattr(module, "download_pretrained", refuse)
        monkeypatch.setattr(module, "download_pretrained_from_hf", refuse)


@pytest.fixture
def clip_cache(tmp_path, monkeypatch):
    folder = tmp_path / "clip-cache"
    folder.mkdir()
    monkeypatch.setenv(loader.CLIP_CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache in offline mode, whatever this machine has cached."""
    import huggingface_hub.constants as hub
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)


@pytest.fixture
def create_model_calls(monkeypatch):
    """Records (architecture, pretrained, force_quick_gelu) of each open_clip.create_model call."""
    calls = []
    real = open_clip.create_model

    def spy(model_name, pretrained=None, **kwargs):
        calls.append((model_name, pretrained, kwargs.get("force_quick_gelu", False)))
        return real(model_name, pretrained=pretrained, **kwargs)
    monkeypatch.setattr(open_clip, "create_model", spy)
    return calls


def fp16_exact_tiny(arch=TINY, seed=0):
    """A tiny CLIP whose values are exactly representable in fp16, as OpenAI's weights are."""
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float() + 0.0)
    # Frozen like load_clip's models: nn.MultiheadAttention takes its fused fast path only when
    # no parameter requires grad, and the two paths differ in the last bits.
    return model.eval().requires_grad_(False)


def save_openai_archive(model, path, keep_attn_mask_buffer=False):
    """Trace `model` into a TorchScript archive laid out like OpenAI's published files.

    OpenAI's archives keep `input_resolution`, `context_length` and `vocab_size` as tensors in
    the state dict and hold the causal mask as a plain attribute, not a buffer.
    open_clip.trace_model fails on ViTs in 3.3.0, hence the hand-made trace.
    """
    model = copy.deepcopy(model)
    del model.context_length, model.vocab_size
    model.register_buffer("input_resolution", torch.tensor(model.visual.image_size[0]))
    model.register_buffer("context_length", torch.tensor(77))
    model.register_buffer("vocab_size", torch.tensor(49408))
    if not keep_attn_mask_buffer:
        mask = model.attn_mask
        del model.attn_mask
        model.attn_mask = mask
    images, texts = example_inputs()
    with warnings.catch_warnings():  # torch deprecates TorchScript; OpenAI's files are TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace_module(model, {"forward": (images, texts),
                                                "encode_image": (images,),
                                                "encode_text": (texts,)})
        torch.jit.save(traced, str(path))
    return path


def example_inputs():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    texts = open_clip.tokenize(["a photo of a circle.", "X X X X square."])
    return images, texts


def assert_same_weights(loaded, reference):
    expected = reference.state_dict()
    actual = loaded.state_dict()
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def assert_same_features(loaded, reference):
    images, texts = example_inputs()
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), reference.encode_image(images))
        assert torch.equal(loaded.encode_text(texts), reference.encode_text(texts))


def activation(model):
    return type(model.transformer.resblocks[0].mlp.gelu)


# --------------------------------------------------------------------------------------------
# Building and names
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pretrained", ["", "none", "random", "None"])
def test_tiny_random_weights_build_frozen_eval_fp32_without_network(no_network, pretrained):
    model = load_clip(TINY, pretrained)
    assert isinstance(model, open_clip.model.CLIP)
    assert not model.training and all(not m.training for m in model.modules())
    assert all(not p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert activation(model) is QuickGELU


def test_tiny_config_has_the_documented_shape():
    model = load_clip(TINY, "")
    assert model.text_projection.shape == (64, 32)
    assert model.visual.image_size == (32, 32) and model.visual.patch_size == (8, 8)
    assert len(model.transformer.resblocks) == 2 and len(model.visual.transformer.resblocks) == 2
    assert model.transformer.resblocks[0].attn.num_heads == 1
    assert model.visual.transformer.resblocks[0].attn.num_heads == 1
    assert model.positional_embedding.shape == (77, 64)
    assert model.token_embedding.num_embeddings == 49408


def test_coop_names_map_to_open_clip_architectures():
    assert resolve_backbone_name("ViT-B/16") == "ViT-B-16"
    assert resolve_backbone_name("ViT-B/32") == "ViT-B-32"
    assert resolve_backbone_name("ViT-L/14@336px") == "ViT-L-14-336"
    assert resolve_backbone_name("RN50") == "RN50"
    assert resolve_backbone_name("ViT-B-16-quickgelu") == "ViT-B-16-quickgelu"
    assert resolve_backbone_name(TINY) == TINY
    for architecture in COOP_BACKBONE_NAMES.values():
        assert architecture in open_clip.list_models()


def test_unknown_name_lists_coop_names_and_points_to_open_clip():
    with pytest.raises(ValueError) as info:
        load_clip("ViT-B/61", "")
    message = str(info.value)
    assert "ViT-B/61" in message
    for name in COOP_BACKBONE_NAMES:
        assert name in message
    assert "open_clip.list_models()" in message
    assert "Close matches: ViT-B/16" in message


def test_available_backbones_lists_coop_names_and_plain_clip_architectures():
    names = available_backbones()
    assert names[: len(COOP_BACKBONE_NAMES)] == list(COOP_BACKBONE_NAMES)
    assert TINY in names and "ViT-B-16-quickgelu" in names
    assert "ViT-B-16-SigLIP" not in names  # a CustomTextCLIP: no text tower on the model


def test_architecture_without_text_tower_on_the_model_is_refused_before_building(create_model_calls):
    with pytest.raises(ValueError, match="CustomTextCLIP"):
        load_clip("ViT-B-16-SigLIP", "")
    assert create_model_calls == []


# --------------------------------------------------------------------------------------------
# QuickGELU follows the weights
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, tag, architecture", [
    ("ViT-B/16", "openai", "ViT-B-16-quickgelu"),
    ("ViT-B-16", "openai", "ViT-B-16-quickgelu"),  # never plain GELU under OpenAI's weights
    ("RN50", "openai", "RN50-quickgelu"),
    ("ViT-B/16", "laion2b_s34b_b88k", "ViT-B-16"),  # trained with GELU
])
def test_tag_selects_the_activation_it_was_trained_with(
        name, tag, architecture, create_model_calls, clip_cache, offline_hub):
    with pytest.raises(RuntimeError):  # offline and nothing cached: open_clip cannot download
        load_clip(name, tag)
    assert create_model_calls == [(architecture, tag, False)]


def test_coop_name_with_random_weights_builds_quickgelu(create_model_calls, monkeypatch):
    # Stand the tiny config in for ViT-B-16's so the check does not build 150 M parameters.
    monkeypatch.setitem(COOP_BACKBONE_NAMES, "Tiny/8", TINY_GELU)
    assert activation(load_clip("Tiny/8", "")) is QuickGELU
    assert activation(load_clip(TINY_GELU, "")) is nn.GELU
    assert create_model_calls == [(TINY_GELU, None, True), (TINY_GELU, None, False)]


@pytest.mark.parametrize("source, expected", [
    ("torchscript", QuickGELU),
    ("openai_state_dict", QuickGELU),
    ("open_clip_state_dict", nn.GELU),
])
def test_file_weights_select_quickgelu_when_they_are_openai_format(tmp_path, source, expected):
    reference = fp16_exact_tiny(TINY_GELU)
    path = tmp_path / "weights.pt"
    if source == "torchscript":
        save_openai_archive(reference, path)
    elif source == "openai_state_dict":
        state_dict = {k: v.half() for k, v in reference.state_dict().items()}
        state_dict.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77),
                          vocab_size=torch.tensor(49408))
        torch.save(state_dict, path)
    else:
        torch.save(reference.state_dict(), path)
    model = load_clip(TINY_GELU, str(path))
    assert activation(model) is expected
    assert_same_weights(model, reference)


# --------------------------------------------------------------------------------------------
# Checkpoint formats
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["pt", "safetensors", "training_checkpoint"])
def test_open_clip_checkpoint_round_trip(tmp_path, layout):
    reference = load_clip(TINY, "")
    state_dict = reference.state_dict()
    if layout == "pt":
        path = tmp_path / "tiny.pt"
        torch.save(state_dict, path)
    elif layout == "safetensors":
        path = tmp_path / "tiny.safetensors"
        save_file(state_dict, str(path))
    else:  # what open_clip's training script writes: nested, with DDP's "module." prefix
        path = tmp_path / "epoch_1.pth"
        torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state_dict.items()}}, path)
    model = load_clip(TINY, str(path))
    assert_same_weights(model, reference)
    assert all(not p.requires_grad for p in model.parameters()) and not model.training


def test_openai_torchscript_archive_gives_the_same_weights_and_features(tmp_path, monkeypatch):
    reference = fp16_exact_tiny()
    path = save_openai_archive(reference, tmp_path / "tiny-openai.pt")
    with monkeypatch.context() as patch:  # read as data: the archive's program never runs
        patch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load called"))
        model = load_clip(TINY, str(path))
    assert_same_weights(model, reference)
    assert_same_features(model, reference)
    assert all(not p.requires_grad for p in model.parameters()) and not model.training
    # open_clip's own reader infers the architecture from the archive's shapes (text heads =
    # width // 64, vision head width 64): it must read the same model, so the archive is
    # OpenAI's format and the tiny config round-trips through it.
    inferred = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
    assert_same_weights(inferred, reference)
    assert activation(inferred) is QuickGELU


def test_torchscript_trace_of_an_open_clip_model_loads(tmp_path):
    # TorchScript keeps non-persistent buffers (open_clip's attn_mask) in its state dict.
    reference = fp16_exact_tiny()
    path = save_openai_archive(reference, tmp_path / "traced.pt", keep_attn_mask_buffer=True)
    assert "attn_mask" in torch.jit.load(str(path)).state_dict()
    assert_same_weights(load_clip(TINY, str(path)), reference)


def test_weights_of_another_architecture_are_refused_with_a_description(tmp_path):
    state_dict = load_clip(TINY, "").state_dict()
    del state_dict["visual.proj"]
    path = tmp_path / "broken.pt"
    torch.save(state_dict, path)
    with pytest.raises(RuntimeError) as info:
        load_clip(TINY, str(path))
    message = str(info.value)
    assert str(path) in message and "1 missing (e.g. visual.proj)" in message
    assert "MODEL.BACKBONE.NAME" in message


def test_pickled_python_objects_are_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": load_clip(TINY, "").state_dict(), "args": argparse_namespace()}, path)
    with pytest.raises(RuntimeError, match="weights_only=True"):
        load_clip(TINY, str(path))


def argparse_namespace():
    import argparse
    return argparse.Namespace(lr=0.1)


# --------------------------------------------------------------------------------------------
# Where OpenAI's weights are found, and the errors when they are not
# --------------------------------------------------------------------------------------------

def test_openai_cache_file_uses_openais_file_names(monkeypatch):
    monkeypatch.delenv(loader.CLIP_CACHE_ENV, raising=False)
    cache = openai_cache_file("ViT-B/16").parent
    assert str(cache).endswith(".cache/clip") and cache.is_absolute()
    assert openai_cache_file("ViT-B/16").name == "ViT-B-16.pt"
    assert openai_cache_file("ViT-B-16-quickgelu").name == "ViT-B-16.pt"
    assert openai_cache_file("ViT-L/14@336px").name == "ViT-L-14-336px.pt"
    assert openai_cache_file("RN50").name == "RN50.pt"
    assert openai_cache_file(TINY).name == f"{TINY}.pt"


def test_openai_tag_loads_the_clip_package_cache_without_network(tmp_path, clip_cache, no_network):
    reference = fp16_exact_tiny()
    save_openai_archive(reference, clip_cache / f"{TINY}.pt")
    model = load_clip(TINY, "openai")
    assert_same_weights(model, reference)
    assert_same_features(model, reference)


def test_openai_tag_offline_without_cache_says_where_to_put_the_file(clip_cache, offline_hub):
    with pytest.raises(RuntimeError) as info:
        load_clip("ViT-B/16", "openai")
    message = str(info.value)
    assert "'openai'" in message
    assert "ViT-B-16.pt" in message and str(clip_cache) in message
    assert loader.CLIP_CACHE_ENV in message and "MODEL.BACKBONE.PRETRAINED" in message


def test_openai_tag_for_an_architecture_openai_never_released(clip_cache):
    with pytest.raises(ValueError) as info:
        load_clip(TINY, "openai")
    assert str(clip_cache / f"{TINY}.pt") in str(info.value)


@pytest.mark.parametrize("pretrained", ["/no/such/dir/ViT-B-16.pt", "missing.safetensors", "~/nope.pth"])
def test_missing_checkpoint_file_is_named(pretrained):
    with pytest.raises(FileNotFoundError) as info:
        load_clip(TINY, pretrained)
    assert pretrained in str(info.value) and "MODEL.BACKBONE.PRETRAINED" in str(info.value)


def test_unknown_tag_lists_the_known_tags(create_model_calls):
    with pytest.raises(ValueError) as info:
        load_clip("ViT-B/32", "laion9b")
    assert "'laion9b'" in str(info.value) and "laion2b_s34b_b79k" in str(info.value)
    assert create_model_calls == []


# --------------------------------------------------------------------------------------------
# local-dir: folders, as open_clip reads them
# --------------------------------------------------------------------------------------------

@pytest.fixture
def local_dir(tmp_path):
    reference = load_clip(TINY, "")
    folder = tmp_path / "tiny-folder"
    folder.mkdir()
    model_cfg = json.loads((loader.MODEL_CONFIG_DIR / f"{TINY}.json").read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    save_file(reference.state_dict(), str(folder / "open_clip_model.safetensors"))
    return folder, reference


def test_local_dir_as_pretrained_or_as_name(local_dir, no_network):
    folder, reference = local_dir
    for name, pretrained in [(TINY, f"local-dir:{folder}"), (f"local-dir:{folder}", "openai"),
                             (f"local-dir:{folder}", "")]:
        model = load_clip(name, pretrained)
        assert_same_weights(model, reference)
        assert all(not p.requires_grad for p in model.parameters()) and not model.training


def test_local_dir_that_does_not_match_the_name_is_refused(local_dir):
    folder, _ = local_dir
    with pytest.raises(ValueError, match="does not describe the model"):
        load_clip("ViT-B/16", f"local-dir:{folder}")


def test_local_dir_without_config_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        load_clip(TINY, f"local-dir:{tmp_path}")
