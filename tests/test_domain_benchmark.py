"""The controlled benchmark has the property it claims: the best prompt depends on the domain."""
import json
import os

import numpy as np
import pytest

from conftest import build_demo_trainer
from trainers.data.demo_images import DEMO_CLASSES
from trainers.data.domain_tasks import (GENERATOR_VERSION, GRADED, TINT_AMPLITUDE, GradedSpec, ensure_domain_task,
                                        generate_domain_task, label_of, stored_generator_version)


def test_tasks_are_written_in_the_demo_layout_with_domain_dependent_labels(demo_root, tmp_path):
    homog = build_demo_trainer(demo_root, tmp_path / "h", opts=("DATASET.NAME", "GatescopeHomogeneous"))
    multi = build_demo_trainer(demo_root, tmp_path / "m", opts=("DATASET.NAME", "GatescopeMultiDomain"))
    assert {item.domain for item in homog.dm.dataset.test} == {0}
    assert {item.domain for item in multi.dm.dataset.test} == {0, 1}
    for item in multi.dm.dataset.test:
        shape = next(s for s in DEMO_CLASSES if f"_{s}_" in item.impath)
        assert item.label == label_of(DEMO_CLASSES.index(shape), item.domain)
        assert item.classname == DEMO_CLASSES[item.label]
    # On the dark domain a circle is called a square, and the other way round.
    assert label_of(0, 1) == 1 and label_of(1, 1) == 0 and label_of(0, 0) == 0
    assert homog.dm.num_classes == multi.dm.num_classes == 10


def test_source_domains_keep_one_domain_and_name_bad_ones(demo_root, tmp_path):
    dark = build_demo_trainer(demo_root, tmp_path / "d", opts=(
        "DATASET.NAME", "GatescopeMultiDomain", "DATASET.SOURCE_DOMAINS", '["dark"]', "DATASET.NUM_SHOTS", 4))
    assert {item.domain for split in (dark.dm.dataset.train_x, dark.dm.dataset.test) for item in split} == {1}
    with pytest.raises(ValueError, match=r"\['sketch'\] are not domains of GatescopeMultiDomain"):
        build_demo_trainer(demo_root, tmp_path / "x", opts=(
            "DATASET.NAME", "GatescopeMultiDomain", "DATASET.SOURCE_DOMAINS", '["sketch"]'))


def oracle_and_single_prompt(demo_root, tmp_path, task, domains, epochs=None):
    """(accuracy of one CoOp prompt trained on every domain, the oracle's accuracy, the oracle's
    per-domain accuracies). The oracle is told the domain and trains one prompt per domain
    (DATASET.SOURCE_DOMAINS); its accuracy on the whole test set is the mean of its per-domain
    accuracies (every domain has equally many test images)."""
    opts = tuple(task) + (("OPTIM.MAX_EPOCH", epochs) if epochs else ())
    single = build_demo_trainer(demo_root, tmp_path / "single", opts=opts)
    single.train()
    per_domain = []
    for domain in domains:
        oracle = build_demo_trainer(demo_root, tmp_path / domain, opts=opts + ("DATASET.SOURCE_DOMAINS", f'["{domain}"]'))
        oracle.train()
        per_domain.append(oracle.test()["accuracy"])
    return single.test()["accuracy"], sum(per_domain) / len(per_domain), per_domain


def graded(strength=1.0, domains=2, labels="swap"):
    """The options of a graded task with these knobs."""
    return ("DATASET.NAME", "GatescopeGraded", "DATASET.DOMAIN_TASK.STRENGTH", strength,
            "DATASET.DOMAIN_TASK.NUM_DOMAINS", domains, "DATASET.DOMAIN_TASK.LABELS", labels)


def tints(n):
    return tuple(f"tint{d}" for d in range(n))


ORACLE_TASKS = {
    # Trained on both domains, one CoOp prompt must serve two label mappings; the oracle does not.
    "multidomain": (("DATASET.NAME", "GatescopeMultiDomain"), ("light", "dark"), None),
    # The graded family at full strength: two mappings over two tints, and one mapping per tint
    # over three (10 epochs suffice for the gap).
    "graded-s1-n2-swap": (("DATASET.NAME", "GatescopeGraded"), ("tint0", "tint1"), 10),
    "graded-s1-n3-shift": (("DATASET.NAME", "GatescopeGraded", "DATASET.DOMAIN_TASK.NUM_DOMAINS", 3,
                            "DATASET.DOMAIN_TASK.LABELS", "shift"), ("tint0", "tint1", "tint2"), 10),
    # The other task variants of the regime map (trainers/tools/grids/regime_map.yaml): the oracle
    # is told the domain, so its gap holds however alike the tints look; a single prompt's does not.
    "graded-s0.1-n2-swap": (graded(0.1), tints(2), 10),
    "graded-s0.25-n2-swap": (graded(0.25), tints(2), 10),
    "graded-s0.5-n2-swap": (graded(0.5), tints(2), 10),
    "graded-s1-n3-swap": (graded(1.0, 3), tints(3), 10),
    "graded-s1-n4-shift": (graded(1.0, 4, "shift"), tints(4), 10),
    "graded-s1-n2-swap-2shots": (graded() + ("DATASET.NUM_SHOTS", 2), tints(2), 10),
}
# The control: labels ignore the domain, so one prompt per domain cannot beat one prompt.
CONTROL_TASKS = {"graded-s1-n2-same": (graded(labels="same"), tints(2), 10)}


@pytest.mark.parametrize("name", list(ORACLE_TASKS))
def test_an_oracle_with_one_prompt_per_domain_beats_a_single_prompt(demo_root, tmp_path, name):
    task, domains, epochs = ORACLE_TASKS[name]
    single_acc, oracle_acc, per_domain = oracle_and_single_prompt(demo_root, tmp_path, task, domains, epochs)
    print(f"{name}: single prompt {single_acc:.1f}%, oracle {oracle_acc:.1f}% (per domain "
          f"{', '.join(f'{d} {a:.1f}' for d, a in zip(domains, per_domain))})")
    assert oracle_acc > single_acc + 5.0


@pytest.mark.parametrize("name", list(CONTROL_TASKS))
def test_in_the_control_an_oracle_gains_nothing_over_a_single_prompt(demo_root, tmp_path, name):
    task, domains, epochs = CONTROL_TASKS[name]
    single_acc, oracle_acc, _ = oracle_and_single_prompt(demo_root, tmp_path, task, domains, epochs)
    print(f"{name}: single prompt {single_acc:.1f}%, oracle {oracle_acc:.1f}%")
    assert oracle_acc < single_acc + 5.0


def task_knobs(opts):
    """(dataset, strength, domains, labels, shots) that KEY VALUE `opts` set (graded defaults)."""
    values = dict(zip([str(k) for k in opts[::2]], [str(v) for v in opts[1::2]]))
    return (values.get("DATASET.NAME"), float(values.get("DATASET.DOMAIN_TASK.STRENGTH", 1.0)),
            int(values.get("DATASET.DOMAIN_TASK.NUM_DOMAINS", 2)), values.get("DATASET.DOMAIN_TASK.LABELS", "swap"),
            int(values.get("DATASET.NUM_SHOTS", 16)))


def test_every_task_of_the_regime_map_has_its_oracle_check():
    """Each task variant the regime map runs on the demo weights is one of the checks above, at 16
    shots and at its fewest shots. The gatescope-demo-sparse tasks are left to the map itself (its
    table shows the oracle and CoOp side by side): pretraining that backbone costs minutes."""
    from trainers.tools import study
    from trainers.tools.grid import read_grid_file

    checked = {task_knobs(task) for task, _, _ in [*ORACLE_TASKS.values(), *CONTROL_TASKS.values()]}
    spec = read_grid_file(study.preset_path("regime_map"))
    names = {"gatescope_multidomain": "GatescopeMultiDomain", "gatescope_graded": "GatescopeGraded"}
    for label, entry in spec["datasets"].items():
        if "MODEL.BACKBONE.PRETRAINED" in entry.get("opts", []):
            continue
        for shots in {16, min(entry.get("shots", [16]))}:
            knobs = task_knobs(("DATASET.NAME", names[entry["config"]], *entry.get("opts", []),
                                "DATASET.NUM_SHOTS", shots))
            assert knobs in checked, f"the regime map's task {label} ({shots} shots) has no oracle check"


def test_graded_task_labels_domains_and_folder_follow_its_knobs(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, opts=(
        "DATASET.NAME", "GatescopeGraded", "DATASET.DOMAIN_TASK.STRENGTH", 0.5, "DATASET.DOMAIN_TASK.NUM_DOMAINS", 3,
        "DATASET.DOMAIN_TASK.LABELS", "shift"))
    dataset = trainer.dm.dataset
    assert dataset.dataset_dir == os.path.join(demo_root, "gatescope_graded", "s0.50_n3_shift")
    assert {item.domain for item in dataset.test} == {0, 1, 2} and len(dataset.test) == 3 * 10 * 8
    for item in dataset.test:
        shape = next(s for s in DEMO_CLASSES if f"_{s}_" in item.impath)
        assert f"_tint{item.domain}_" in item.impath
        assert item.label == (DEMO_CLASSES.index(shape) + item.domain) % 10
    with open(os.path.join(dataset.dataset_dir, "metadata.json")) as f:
        metadata = json.load(f)
    assert metadata["graded"] == {"strength": 0.5, "num_domains": 3, "labels": "shift"}
    assert metadata["generator_version"] == GENERATOR_VERSION
    # "swap" is the multi-domain task's mapping on odd domains; "same" ignores the domain.
    swap, same = GradedSpec(num_domains=4, labels="swap"), GradedSpec(labels="same")
    assert [swap.label_of(2, d) for d in range(4)] == [2, 3, 2, 3] and swap.num_mappings == 2
    assert [same.label_of(5, d) for d in range(2)] == [5, 5] and same.num_mappings == 1


def test_graded_strength_scales_the_tint_and_zero_makes_the_domains_alike():
    for spec in (GradedSpec(strength=0.0, num_domains=3), GradedSpec(strength=1.0, num_domains=3)):
        tints = np.stack([spec.tint(d) for d in range(3)])
        np.testing.assert_allclose(tints.sum(1), 0.0, atol=1e-9)  # orthogonal to grey: no brightness change
        np.testing.assert_allclose(np.abs(tints).max(), spec.strength * TINT_AMPLITUDE, atol=1e-9)
    alike = GradedSpec(strength=0.0)
    for d in range(2):
        background, _ = alike.style(d)(np.random.default_rng(1), 8)
        assert np.ptp(background[0, 0]) == 0  # plain grey in every domain
    strong = GradedSpec(strength=1.0)
    (b0, _), (b1, _) = (strong.style(d)(np.random.default_rng(1), 8) for d in range(2))
    np.testing.assert_allclose(b0[0, 0] - b1[0, 0], 2 * strong.tint(0))  # same grey drawn: the tints differ


@pytest.mark.parametrize("key,value,message", [
    ("STRENGTH", 1.5, r"DATASET.DOMAIN_TASK.STRENGTH must be >= 0 and <= 1, got 1.5"),
    ("NUM_DOMAINS", 9, r"DATASET.DOMAIN_TASK.NUM_DOMAINS must be >= 2 and <= 6, got 9"),
    ("LABELS", "random", r"LABELS must be one of \('swap', 'shift', 'same'\)"),
])
def test_graded_task_knobs_are_checked(demo_root, tmp_path, key, value, message):
    with pytest.raises(ValueError, match=message):
        build_demo_trainer(demo_root, tmp_path, opts=("DATASET.NAME", "GatescopeGraded", f"DATASET.DOMAIN_TASK.{key}", value))


def test_a_task_folder_of_another_generator_version_is_written_again(tmp_path):
    folder = str(tmp_path / "task")
    generate_domain_task(folder, GRADED, spec=GradedSpec(num_domains=2))
    marker = os.path.join(folder, "marker")
    open(marker, "w").close()
    ensure_domain_task(folder, GRADED, GradedSpec(num_domains=2))  # current version: kept as it is
    assert os.path.isfile(marker)
    meta_path = os.path.join(folder, "metadata.json")
    with open(meta_path) as f:
        metadata = json.load(f)
    metadata["generator_version"] = GENERATOR_VERSION - 1
    with open(meta_path, "w") as f:
        json.dump(metadata, f)
    ensure_domain_task(folder, GRADED, GradedSpec(num_domains=2))
    assert not os.path.exists(marker) and stored_generator_version(folder) == GENERATOR_VERSION
    assert not [p for p in os.listdir(tmp_path) if p != "task"]  # no stale or temporary folder left behind
