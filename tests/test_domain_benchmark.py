"""The controlled benchmark has the property it claims: the best prompt depends on the domain."""
import pytest

from conftest import build_demo_trainer
from trainers.data.demo_images import DEMO_CLASSES
from trainers.data.domain_tasks import label_of


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


def test_an_oracle_with_one_prompt_per_domain_beats_a_single_prompt(demo_root, tmp_path):
    """Trained on both domains, one CoOp prompt must serve two label mappings; an oracle that is
    told the domain and trains one prompt per domain does not. Its accuracy on the whole test set
    is the mean of its per-domain accuracies (the domains have equally many test images)."""
    task = ("DATASET.NAME", "GatescopeMultiDomain")
    single = build_demo_trainer(demo_root, tmp_path / "single", opts=task)
    single.train()
    single_acc = single.test()["accuracy"]
    per_domain = []
    for domain in ("light", "dark"):
        oracle = build_demo_trainer(demo_root, tmp_path / domain,
                                    opts=task + ("DATASET.SOURCE_DOMAINS", f'["{domain}"]'))
        oracle.train()
        per_domain.append(oracle.test()["accuracy"])
    oracle_acc = sum(per_domain) / 2
    print(f"single prompt {single_acc:.1f}%, oracle {oracle_acc:.1f}% (light {per_domain[0]:.1f}, "
          f"dark {per_domain[1]:.1f})")
    assert oracle_acc > single_acc + 5.0
