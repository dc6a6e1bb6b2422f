"""The demo backbone's weights: pretrained locally, cached, loaded through the normal loader."""
import pytest
import torch

from trainers.backbone import demo_weights, load_clip


def test_short_pretraining_is_cached_and_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("GATESCOPE_CACHE", str(tmp_path))
    monkeypatch.setitem(demo_weights.RECIPE, "steps", 3)
    monkeypatch.setitem(demo_weights.RECIPE, "corpus_size", 64)
    monkeypatch.setitem(demo_weights.RECIPE, "batch_size", 16)
    path = demo_weights.ensure_demo_weights(verbose=False)
    assert path.startswith(str(tmp_path)) and [p.name for p in tmp_path.iterdir()] == [path.rsplit("/", 1)[-1]]
    saved = torch.load(path, weights_only=True)
    model = load_clip("gatescope-tiny", "gatescope-demo")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
    # Deterministic: the same recipe gives the same weights.
    again = demo_weights.pretrain_demo_clip(verbose=False)
    torch.testing.assert_close(again["logit_scale"], saved["logit_scale"], rtol=0, atol=0)


def test_pretraining_moves_the_weights(tmp_path):
    trained = demo_weights.pretrain_demo_clip(verbose=False, steps=3, corpus_size=64, batch_size=16)
    with torch.random.fork_rng():
        torch.manual_seed(demo_weights.RECIPE["seed"])
        import open_clip
        initial = open_clip.create_model("gatescope-tiny").state_dict()
    assert not torch.equal(initial["text_projection"], trained["text_projection"])


def test_demo_tag_exists_only_for_the_tiny_model():
    with pytest.raises(ValueError, match="only for MODEL.BACKBONE.NAME 'gatescope-tiny'"):
        load_clip("ViT-B/16", "gatescope-demo")
