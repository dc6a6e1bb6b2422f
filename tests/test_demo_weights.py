"""The demo backbone's weights: pretrained locally, once per machine, cached, loaded through the normal loader."""
import logging
import os
import queue
import subprocess
import sys
import threading

import pytest
import torch
from conftest import REPO
from filelock import FileLock

from trainers.backbone import demo_weights, load_clip


def test_short_pretraining_is_cached_and_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("GATESCOPE_CACHE", str(tmp_path))
    monkeypatch.setitem(demo_weights.RECIPE, "steps", 3)
    monkeypatch.setitem(demo_weights.RECIPE, "corpus_size", 64)
    monkeypatch.setitem(demo_weights.RECIPE, "batch_size", 16)
    path = demo_weights.ensure_demo_weights(verbose=False)
    name = path.rsplit("/", 1)[-1]
    assert path.startswith(str(tmp_path)) and sorted(p.name for p in tmp_path.iterdir()) == [name, f"{name}.lock"]
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


def test_first_use_says_what_happens_and_shows_progress_not_a_random_init_warning(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("GATESCOPE_CACHE", str(tmp_path))
    monkeypatch.setitem(demo_weights.RECIPE, "steps", 3)
    monkeypatch.setitem(demo_weights.RECIPE, "corpus_size", 64)
    monkeypatch.setitem(demo_weights.RECIPE, "batch_size", 16)
    with caplog.at_level(logging.INFO):
        path = demo_weights.ensure_demo_weights(verbose=True)
    out, err = capsys.readouterr()
    assert "pretraining it once on generated shape images" in out and path in out
    assert "demo CLIP pretraining" in err and "3/3" in err  # tqdm's bar, on stderr
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]


# Imports first, then waits for a line on stdin, so the two processes ask for the weights together.
CHILD = """
import sys, torch
from trainers.backbone import demo_weights
demo_weights.RECIPE.update(steps=20, corpus_size=64, batch_size=16)
print("ready", flush=True)
sys.stdin.readline()
path = demo_weights.ensure_demo_weights()
print("weights", float(torch.load(path, weights_only=True)["text_projection"].sum()), flush=True)
"""


def start_child(env):
    child = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = queue.Queue()

    def read():
        for line in child.stdout:
            lines.put(line)
        lines.put(None)  # the child closed its output: it ended
    threading.Thread(target=read, daemon=True).start()
    return child, lines


def wait_for(lines, prefix, seen, timeout=300):
    """The first line from a child that starts with `prefix`; fails if it ends or reports weights first."""
    while True:
        line = lines.get(timeout=timeout)
        assert line is not None, f"the child ended before printing {prefix!r}: {''.join(seen)}"
        seen.append(line)
        if line.startswith(prefix):
            return line
        assert not line.startswith("weights"), f"expected {prefix!r} before the weights: {''.join(seen)}"


def test_two_processes_on_an_empty_cache_pretrain_once(tmp_path):
    """Both start together and wait on the lock, which the test holds until both are waiting;
    then one pretrains, the other waits for it and reads its file."""
    env = {**os.environ, "GATESCOPE_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    weights_path = os.path.join(str(tmp_path), os.path.basename(demo_weights.demo_weights_path()))
    held = FileLock(f"{weights_path}.lock")
    held.acquire()
    children = [start_child(env) for _ in range(2)]
    outputs = [[], []]
    try:
        for (child, lines), seen in zip(children, outputs):
            wait_for(lines, "ready", seen)
        for child, _ in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        for (child, lines), seen in zip(children, outputs):
            wait_for(lines, "Another process is making the demo CLIP's weights", seen)
        held.release()
        weights = [wait_for(lines, "weights", seen) for (child, lines), seen in zip(children, outputs)]
    finally:
        if held.is_locked:
            held.release()
        for child, _ in children:
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
    text = "".join(outputs[0] + outputs[1])
    assert text.count("pretraining it once") == 1, text
    assert weights[0] == weights[1]
    assert os.path.isfile(weights_path)


TINY_RECIPE = dict(steps=3, corpus_size=64, batch_size=16)


def test_the_compact_shipped_form_expands_to_the_same_weights(tmp_path, monkeypatch):
    for key, value in TINY_RECIPE.items():
        monkeypatch.setitem(demo_weights.RECIPE, key, value)
    trained = demo_weights.pretrain_demo_clip(verbose=False)
    path = str(tmp_path / "shipped.safetensors")
    demo_weights.write_shipped_weights(trained, path)
    assert demo_weights.shipped_recipe(path) == demo_weights.RECIPE
    expanded = demo_weights.expand_shipped_weights(path)
    assert expanded.keys() == trained.keys()
    for key, value in trained.items():
        assert torch.equal(expanded[key], value), key
    # Only the rows the captions use were trained; the file holds those, not the whole table.
    compact = demo_weights.compact_weights(trained)
    assert 10 < len(compact[demo_weights.ROW_IDS_KEY]) < 100
    assert os.path.getsize(path) < 1.2e6


def test_first_use_unpacks_the_shipped_weights_without_pretraining(tmp_path, monkeypatch):
    monkeypatch.setenv("GATESCOPE_CACHE", str(tmp_path / "cache"))
    for key, value in TINY_RECIPE.items():
        monkeypatch.setitem(demo_weights.RECIPE, key, value)
    shipped_dir = tmp_path / "pretrained"
    shipped_dir.mkdir()
    monkeypatch.setattr(demo_weights, "SHIPPED_DIR", str(shipped_dir))
    trained = demo_weights.pretrain_demo_clip(verbose=False)
    demo_weights.write_shipped_weights(trained, demo_weights.shipped_weights_path())

    def no_pretraining(*args, **kwargs):
        raise AssertionError("pretraining called")
    monkeypatch.setattr(demo_weights, "pretrain_demo_clip", no_pretraining)
    model = load_clip("gatescope-tiny", "gatescope-demo")
    for key, value in trained.items():
        assert torch.equal(model.state_dict()[key], value), key

    # A recipe that no longer matches the shipped file is pretrained, never silently replaced.
    monkeypatch.setitem(demo_weights.RECIPE, "steps", 4)
    monkeypatch.setenv("GATESCOPE_CACHE", str(tmp_path / "other-cache"))
    with pytest.raises(AssertionError, match="pretraining called"):
        demo_weights.ensure_demo_weights(verbose=False)


def test_the_shipped_weights_are_those_of_the_current_recipe():
    path = demo_weights.shipped_weights_path()
    assert os.path.isfile(path), f"{path} is missing: run `python -m trainers.backbone.demo_weights`"
    assert demo_weights.shipped_recipe(path) == demo_weights.RECIPE, (
        "RECIPE changed: bump RECIPE_VERSION and rerun `python -m trainers.backbone.demo_weights`")
    expanded = demo_weights.expand_shipped_weights(path)
    assert expanded.keys() == demo_weights.initial_state_dict().keys()


def test_the_sparse_variant_trains_only_the_caption_rows_as_the_dense_run_does(tmp_path, monkeypatch):
    """gatescope-demo-sparse: the same pretraining with the caption tokens' embedding rows as the
    only embedding parameters. The other rows keep their initial values (the dense run only
    decays them); the used rows take the dense run's steps, up to float rounding."""
    for key, value in (("steps", 3), ("corpus_size", 64), ("batch_size", 16)):
        monkeypatch.setitem(demo_weights.RECIPE, key, value)
    table = demo_weights.TOKEN_EMBEDDING
    dense = demo_weights.pretrain_demo_clip(verbose=False)
    sparse = demo_weights.pretrain_demo_clip(verbose=False, embedding_rows="used")
    initial = demo_weights.initial_state_dict()[table]
    r = demo_weights.RECIPE
    used = torch.unique(demo_weights.demo_corpus(r["corpus_size"], r["image_size"], r["seed"])[1])
    unused = torch.ones(len(initial), dtype=torch.bool)
    unused[used] = False
    assert torch.equal(sparse[table][unused], initial[unused])
    assert torch.equal(dense[table][unused], demo_weights.untrained_embedding()[unused])
    moved = (sparse[table][used] - initial[used]).abs().mean()
    assert moved > 0 and (sparse[table][used] - dense[table][used]).abs().mean() < 0.1 * moved
    for key in ("text_projection", "visual.proj", "logit_scale"):
        step = (dense[key] - demo_weights.initial_state_dict()[key]).abs().mean()
        assert (sparse[key] - dense[key]).abs().mean() < 0.1 * step, key
    with pytest.raises(ValueError, match='embedding_rows must be "all" or "used"'):
        demo_weights.pretrain_demo_clip(verbose=False, embedding_rows="some")


def test_the_sparse_tag_is_pretrained_at_first_use_and_cached_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("GATESCOPE_CACHE", str(tmp_path))
    for key, value in (("steps", 2), ("corpus_size", 64), ("batch_size", 16)):
        monkeypatch.setitem(demo_weights.RECIPE, key, value)
    model = load_clip("gatescope-tiny", "gatescope-demo-sparse")
    path = demo_weights.demo_weights_path(demo_weights.DEMO_SPARSE_TAG)
    assert os.path.isfile(path) and not os.path.isfile(demo_weights.demo_weights_path())
    saved = torch.load(path, weights_only=True)
    assert torch.equal(model.state_dict()["text_projection"], saved["text_projection"])
    with pytest.raises(ValueError, match="unknown demo weights 'gatescope-demo-x'; the demo tags are"):
        demo_weights.ensure_demo_weights(verbose=False, tag="gatescope-demo-x")
    with pytest.raises(ValueError, match="only for MODEL.BACKBONE.NAME 'gatescope-tiny'"):
        load_clip("ViT-B/16", "gatescope-demo-sparse")
