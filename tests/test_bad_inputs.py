"""A table of bad inputs, each tried and required to fail with a message that says what to fix.

`BAD_INPUTS` is walked by one parametrised test (its ids are the case names, so
`pytest -v tests/test_bad_inputs.py` shows every case tried) and counted by
`test_the_table_covers_every_kind_of_bad_input`. Cases that need a training run (a NaN, a
broken plugin hook, a diagnostics failure, a misbehaving gate) follow the table.
"""
import json
import os
import re
import warnings

import pytest
import torch
from PIL import Image

from conftest import REPO, build_demo_trainer, demo_args
from test_data_images import png_header
from gates import hookimpl

FAST = ("OPTIM.MAX_EPOCH", 1, "DATASET.NUM_SHOTS", 2, "TRAIN.PRINT_FREQ", 100)


def setup(root, out, trainer="CoOp", opts=(), config_trainer=None, config=None):
    import trainers

    config = config or os.path.join(REPO, "configs", "trainers", config_trainer or trainer, "demo.yaml")
    return trainers.setup_cfg(demo_args(root, out, trainer, config=config, opts=opts))


def build(root, out, trainer="CoOp", opts=(), config_trainer=None):
    from trainers.engine import build_trainer

    return build_trainer(setup(root, out, trainer, opts, config_trainer))


def write_images(folder, names, size=8):
    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (size, size), (20 * i % 255, 40, 90)).save(os.path.join(folder, name))


def image_folder(root, classes, per_class=5):
    for c in classes:
        write_images(os.path.join(root, c), [f"{c}_{i}.png" for i in range(per_class)])
    return root


def yaml_file(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- the cases
def unknown_trainer(ctx):
    build(ctx.root, ctx.out, trainer="CoOpp", config_trainer="CoOp")


def unknown_gate(ctx):
    build(ctx.root, ctx.out, trainer="CoOpGated", opts=FAST + ("GATE.NAME", "mpl"))


def unknown_dataset(ctx):
    build(ctx.root, ctx.out, opts=FAST + ("DATASET.NAME", "OxfordPet"))


def unknown_backbone(ctx):
    build(ctx.root, ctx.out, opts=FAST + ("MODEL.BACKBONE.NAME", "ViT-B/61"))


def unknown_transform(ctx):
    build(ctx.root, ctx.out, opts=FAST + ("INPUT.TRANSFORMS", ["random_flop"]))


def unknown_key_in_file(ctx):
    import trainers

    path = yaml_file(ctx.tmp, "TRAINER:\n  COOP:\n    NCTX: 4\n")
    trainers.setup_cfg(demo_args(ctx.root, ctx.out, config=path))


def wrong_type_in_file(ctx):
    import trainers

    path = yaml_file(ctx.tmp, "OPTIM:\n  MAX_EPOCH: ten\n")
    trainers.setup_cfg(demo_args(ctx.root, ctx.out, config=path))


def yaml_syntax_error_in_file(ctx):
    import trainers

    path = yaml_file(ctx.tmp, "OPTIM:\n  LR: [0.1\n  MAX_EPOCH: 3\n")  # an unclosed list
    trainers.setup_cfg(demo_args(ctx.root, ctx.out, config=path))


def python_config_file(ctx):
    import trainers

    path = ctx.tmp / "method.py"
    path.write_text("cfg = {'OPTIM': {'LR': 0.1}}\n")
    trainers.setup_cfg(demo_args(ctx.root, ctx.out, config=str(path)))


def yaml_python_tag(ctx):
    import trainers

    path = yaml_file(ctx.tmp, "OPTIM:\n  LR: !!python/object/apply:os.getcwd []\n")
    trainers.setup_cfg(demo_args(ctx.root, ctx.out, config=path))


def yaml_not_utf8(ctx):
    import trainers

    path = ctx.tmp / "bad.yaml"
    path.write_bytes("# r\u00e9glage\nOPTIM:\n  LR: 0.1\n".encode("latin-1"))
    trainers.setup_cfg(demo_args(ctx.root, ctx.out, config=str(path)))


def pickled_checkpoint(ctx):
    import pickle

    from trainers.engine.checkpoint import load_checkpoint

    path = ctx.tmp / "model.pth.tar-1"
    path.write_bytes(pickle.dumps({"epoch": 1, "call": print}))  # names a function: would run code
    load_checkpoint(str(path))


def unknown_key_on_command_line(ctx):
    setup(ctx.root, ctx.out, opts=("OPTIM.MAX_EPOCHS", 3))


def bad_nonfinite_policy(ctx):
    build(ctx.root, ctx.out, opts=FAST + ("TRAIN.NONFINITE", "ignore"))


def dataset_root_missing(ctx):
    build(str(ctx.tmp / "no_data_here"), ctx.out, opts=FAST + ("DATASET.NAME", "OxfordPets"))


def split_file_missing(ctx):
    os.makedirs(ctx.tmp / "data" / "ucf101" / "UCF-101-midframes")
    build(str(ctx.tmp / "data"), ctx.out, opts=FAST + ("DATASET.NAME", "UCF101"))


def corrupt_image(ctx):
    from trainers.data import DatasetWrapper, Datum

    write_images(ctx.tmp / "img", ["good.png"])
    (ctx.tmp / "img" / "cut.png").write_bytes((ctx.tmp / "img" / "good.png").read_bytes()[:40])
    cfg = setup(ctx.root, ctx.out)
    data = [Datum(str(ctx.tmp / "img" / "cut.png"), 0, 0, "a"), Datum(str(ctx.tmp / "img" / "good.png"), 1, 0, "b")]
    DatasetWrapper(cfg, data)[0]


def missing_image(ctx):
    from trainers.data import DatasetWrapper, Datum

    write_images(ctx.tmp, ["gone.png"])
    data = [Datum(str(ctx.tmp / "gone.png"), 0, 0, "a")]
    os.remove(ctx.tmp / "gone.png")  # deleted after the split was read
    DatasetWrapper(setup(ctx.root, ctx.out), data)[0]


def too_many_shots(ctx):
    from trainers.data import DatasetBase, Datum

    write_images(ctx.tmp, [f"a{i}.png" for i in range(5)] + ["b.png"])
    data = [Datum(str(ctx.tmp / f"a{i}.png"), 0, 0, "cat") for i in range(5)]
    data.append(Datum(str(ctx.tmp / "b.png"), 1, 0, "dog"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DatasetBase().generate_fewshot_dataset(data, num_shots=4)


def n_ctx_too_long(ctx):
    build(ctx.root, ctx.out, opts=FAST + ("TRAINER.COOP.N_CTX", 100))


def base_new_split_of_one_class(ctx):
    root = image_folder(str(ctx.tmp / "one_class"), ["cat"])
    build(root, ctx.out, opts=FAST + ("DATASET.NAME", "ImageFolder", "DATASET.SUBSAMPLE_CLASSES", "base"))


def output_folder_of_another_config(ctx):
    from trainers.engine.utils import claim_output_dir

    claim_output_dir(setup(ctx.root, ctx.out, opts=("OPTIM.LR", 0.002)), str(ctx.out))
    claim_output_dir(setup(ctx.root, ctx.out, opts=("OPTIM.LR", 0.01, "TRAINER.COOP.N_CTX", 8)), str(ctx.out))


def corrupt_checkpoint(ctx):
    from trainers.engine.checkpoint import load_checkpoint, save_checkpoint

    path = save_checkpoint({"state_dict": {"ctx": torch.zeros(4, 8)}, "epoch": 1}, str(ctx.tmp / "ckpt"))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    load_checkpoint(path)


def resume_from_a_checkpoint_of_another_class_count(ctx):
    trainer = build(ctx.root, ctx.out / "all", opts=FAST)
    trainer.save_model(0, str(ctx.out / "all"))
    # (Evaluating those weights on other classes, as base-to-new does, stays allowed.)
    other = build(ctx.root, ctx.out / "base", opts=FAST + ("DATASET.SUBSAMPLE_CLASSES", "base",
                                                           "RESUME", str(ctx.out / "all")))
    other.before_train()


def checkpoint_of_another_trainer(ctx):
    from trainers.engine.checkpoint import check_checkpoint_meta

    state = {"meta": {"trainer": "MaPLe", "backbone": "ViT-B/16", "num_classes": 10}}
    check_checkpoint_meta(state, {"trainer": "CoOp", "backbone": "ViT-B/16", "num_classes": 10}, "x.pth.tar")


# ---------------------------------------------------------------- the data's meaning (labels, files, layouts)
def dataset(root, name, **keys):
    """`name` built from `root` without a trainer (cheap: only the data layer runs), seed 1."""
    from trainers.data import build_dataset
    from trainers.engine.config import get_cfg_default

    cfg = get_cfg_default()
    cfg.DATASET.ROOT, cfg.DATASET.NAME, cfg.DATASET.SUBSAMPLE_CLASSES, cfg.SEED = str(root), name, "all", 1
    for key, value in keys.items():
        setattr(cfg.DATASET, key, value)
    return build_dataset(cfg)


def dtd_with_split(ctx, train, val=(), test=(), raw=None):
    """DTD under ctx.tmp/data with the given split entries (their images written) or raw split bytes."""
    base = ctx.tmp / "data" / "dtd"
    for entry in [*train, *val, *test]:
        write_images(base / "images" / os.path.dirname(entry[0]), [os.path.basename(entry[0])])
    split = base / "split_zhou_DescribableTextures.json"
    split.write_bytes(raw if raw is not None else json.dumps(
        {"train": list(train), "val": list(val), "test": list(test)}).encode())
    return dataset(ctx.tmp / "data", "DescribableTextures")


TWO_CLASSES = [["a/0.png", 0, "a"], ["b/0.png", 1, "b"]]


def split_label_is_a_word(ctx):
    dtd_with_split(ctx, [["a/0.png", 0, "a"], ["b/0.png", "b", "b"]])


def split_label_is_negative(ctx):
    dtd_with_split(ctx, [["a/0.png", -1, "a"], ["b/0.png", 0, "b"]])


def split_labels_with_a_gap(ctx):
    dtd_with_split(ctx, [["a/0.png", 0, "a"], ["b/0.png", 1, "b"], ["c/0.png", 7, "c"]])


def split_label_with_two_names(ctx):
    dtd_with_split(ctx, TWO_CLASSES, val=[["b/1.png", 1, "bee"]])


def label_never_trained(ctx):
    dtd_with_split(ctx, TWO_CLASSES, test=[["a/1.png", 0, "a"], ["c/1.png", 2, "c"]])


def split_file_not_utf8(ctx):
    raw = '{"train": [\n ["a/0.png", 0, "a"],\n ["b/0.png", 1, "caf\u00e9"]\n], "val": [], "test": []}'
    dtd_with_split(ctx, TWO_CLASSES, raw=raw.encode("latin-1"))  # an editor that saved it as Latin-1


def class_names_equal_once_normalised(ctx):
    root = image_folder(str(ctx.tmp / "pets"), ["Golden Retriever", "golden_retriever"])
    dataset(root, "ImageFolder")


def annotation_line_malformed(ctx):
    base = ctx.tmp / "data" / "oxford_pets"
    write_images(base / "images", ["Abyssinian_1.jpg"])
    (base / "annotations").mkdir(parents=True)
    (base / "annotations" / "trainval.txt").write_text("Abyssinian_1 1 1 1\nAbyssinian_2 one 1 1\n")
    (base / "annotations" / "test.txt").write_text("")
    dataset(ctx.tmp / "data", "OxfordPets")


def decompression_bomb(ctx):
    from trainers.data import DatasetWrapper, Datum

    path = ctx.tmp / "bomb.png"
    path.write_bytes(png_header(30000, 30000))  # 900 megapixels declared: PIL refuses to open it
    DatasetWrapper(setup(ctx.root, ctx.out), [Datum(str(path), 0, 0, "a")])[0]


def imagenet(ctx, val_layout):
    base = ctx.tmp / "data" / "imagenet"
    base.mkdir(parents=True)
    (base / "classnames.txt").write_text("n01440764 tench\nn01443537 goldfish\n")
    for wnid in ("n01440764", "n01443537"):
        write_images(base / "images" / "train" / wnid, [f"{wnid}_{i}.JPEG" for i in range(2)])
    val_layout(base / "images" / "val")
    dataset(ctx.tmp / "data", "ImageNet")


def imagenet_with_a_flat_val_folder(ctx):
    imagenet(ctx, lambda val: write_images(val, [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 4)]))


def imagenet_val_missing_a_class(ctx):
    imagenet(ctx, lambda val: write_images(val / "n01440764", ["v.JPEG"]))


def imagenet_variant_without_class_folders(ctx):
    base = ctx.tmp / "data" / "imagenet-sketch"
    write_images(base / "images", ["sketch_1.JPEG", "sketch_2.JPEG"])
    (base / "classnames.txt").write_text("n01440764 tench\n")
    dataset(ctx.tmp / "data", "ImageNetSketch")


def split_built_from_folders_that_changed(ctx):
    root = image_folder(str(ctx.tmp / "mine"), ["cat", "dog"])
    dataset(root, "ImageFolder")  # builds and saves split.json
    image_folder(root, ["zebra"])
    dataset(root, "ImageFolder")


def fewshot_cache_with_a_forged_datum(ctx):
    import pickle

    from trainers.data import Datum

    root = image_folder(str(ctx.tmp / "mine"), ["cat", "dog"])
    item = Datum(os.path.join(root, "cat", "cat_0.png"), 0, 0, "cat")
    item._label = "0; rm -rf"  # a pickle sets fields without Datum's constructor
    os.makedirs(os.path.join(root, "split_fewshot"))
    with open(os.path.join(root, "split_fewshot", "shot_1-seed_1.pkl"), "wb") as f:
        pickle.dump({"train": [item], "val": [item]}, f)
    dataset(root, "ImageFolder", NUM_SHOTS=1)


def batch_size_zero(ctx):
    setup(ctx.root, ctx.out, opts=("DATALOADER.TRAIN_X.BATCH_SIZE", 0))


def print_freq_zero(ctx):
    setup(ctx.root, ctx.out, opts=("TRAIN.PRINT_FREQ", 0))


def n_ctx_negative(ctx):
    setup(ctx.root, ctx.out, opts=("TRAINER.COOP.N_CTX", -1))


def num_workers_negative(ctx):
    setup(ctx.root, ctx.out, opts=("DATALOADER.NUM_WORKERS", -1))


def pixel_std_zero(ctx):
    setup(ctx.root, ctx.out, opts=("INPUT.PIXEL_STD", [0.0, 0.0, 0.0]))


def learning_rate_infinite(ctx):
    setup(ctx.root, ctx.out, opts=("OPTIM.LR", "1e999"))  # yacs parses it as inf


def gate_learning_rate_overflows_float32(ctx):
    setup(ctx.root, ctx.out, trainer="CoOpGated", opts=("OPTIM.LR", 1e38, "GATE.LR_MULT", 10.0))


def gate_test_mode_mistyped(ctx):
    setup(ctx.root, ctx.out, trainer="CoOpGated", opts=("GATE.TEST_MODE", "hrad"))


def gate_target_mistyped(ctx):
    setup(ctx.root, ctx.out, trainer="CoOpGated", opts=("GATE.TARGET", "lenght"))


def gate_cond_mistyped(ctx):
    setup(ctx.root, ctx.out, trainer="MaPLeGated", opts=("GATE.COND", "patch"))


def ivlp_without_prompts_in_either_tower(ctx):
    setup(ctx.root, ctx.out, trainer="IVLP", opts=("TRAINER.IVLP.PROMPT_DEPTH_TEXT", 0,
                                                   "TRAINER.IVLP.PROMPT_DEPTH_VISION", 0))


def maple_gated_without_deep_layers(ctx):
    setup(ctx.root, ctx.out, trainer="MaPLeGated", opts=("TRAINER.MAPLE.PROMPT_DEPTH", 1))


def entropy_remedy_without_direction(ctx):
    setup(ctx.root, ctx.out, trainer="CoOpGated", opts=("REMEDY.ENTROPY.WEIGHT", 0.1))


def config_file_mistyped(ctx):
    setup(ctx.root, ctx.out, config=os.path.join(REPO, "configs", "trainers", "CoOp", "dem.yaml"))


def pretrained_checkpoint_missing(ctx):
    setup(ctx.root, ctx.out, opts=("MODEL.BACKBONE.PRETRAINED", str(ctx.tmp / "weights" / "clip.pt")))


def resume_folder_missing(ctx):
    setup(ctx.root, ctx.out, opts=("RESUME", str(ctx.tmp / "no_such_run")))


def several_bad_values_reported_together(ctx):
    setup(ctx.root, ctx.out, opts=("TRAIN.PRINT_FREQ", 0, "OPTIM.NAME", "adamm", "DIAGNOSTICS.EPS", 0.7))


def root_without_a_dataset(ctx):
    import trainers
    from trainers.cli import build_train_parser

    trainers.setup_cfg(build_train_parser().parse_args(
        ["--trainer", "CoOp", "--config-file", os.path.join(REPO, "configs", "trainers", "CoOp", "demo.yaml"),
         "--root", str(ctx.tmp / "my_images"), "--output-dir", str(ctx.out)]))


# (case, exception type, what the message must say)
BAD_INPUTS = [
    (unknown_trainer, KeyError, r'TRAINER.NAME: unknown trainer "CoOpp"; did you mean "CoOp"\? Available trainers: '
                                r'.*CoOp.*\(set in the command-line flag --trainer\)'),
    (unknown_gate, KeyError, r'GATE.NAME: unknown gate "mpl"; did you mean "mlp"\? Available gates: .*mlp'),
    (unknown_dataset, KeyError, r'DATASET.NAME: unknown dataset "OxfordPet"; did you mean "OxfordPets"\?'),
    (unknown_backbone, ValueError, r"Unknown backbone 'ViT-B/61'.*ViT-B/16"),
    (unknown_transform, ValueError,
     r"INPUT.TRANSFORMS\[0\] must be one of \(.*'random_flip'.*\), got 'random_flop'; did you mean 'random_flip'\?"),
    (unknown_key_in_file, KeyError,
     r"unknown config key TRAINER.COOP.NCTX \(in config file .*bad.yaml\); did you mean TRAINER.COOP.N_CTX\?"),
    (wrong_type_in_file, ValueError, r"MAX_EPOCH.*in config file .*bad.yaml"),
    (yaml_syntax_error_in_file, ValueError,
     r'config file ".*bad.yaml", line 3, column 12: YAML syntax error \(while parsing a flow sequence that '
     r"starts at line 2: expected ',' or '\]', but got ':'\)"),
    (python_config_file, ValueError, r'config file ".*method.py" is Python; gatescope reads YAML config files only'),
    (yaml_python_tag, ValueError, r'config file ".*bad.yaml", line 2, column \d+: the YAML tag !!python/object/apply'),
    (yaml_not_utf8, ValueError, r'config file ".*bad.yaml", line 1, column 4: byte 0xe9 is not UTF-8'),
    (pickled_checkpoint, RuntimeError, r'Checkpoint ".*model.pth.tar-1" contains pickled Python objects \(builtins.print\)'
                                       r".*GATESCOPE_TRUST_CHECKPOINTS=1"),
    (unknown_key_on_command_line, KeyError,
     r"unknown config key OPTIM.MAX_EPOCHS \(in the command-line options\); did you mean OPTIM.MAX_EPOCH\?"),
    (bad_nonfinite_policy, ValueError, r"TRAIN.NONFINITE must be one of \('stop', 'skip'\), got 'ignore'"),
    (dataset_root_missing, FileNotFoundError, r"OxfordPets: missing .*no_data_here.*oxford_pets.*expected"),
    (split_file_missing, FileNotFoundError, r"UCF101: missing .*split_zhou_UCF101.json"),
    (corrupt_image, OSError, r'cannot read image ".*cut.png".*DATASET.SKIP_BAD_IMAGES True'),
    (missing_image, OSError, r'cannot read image ".*gone.png"'),
    (too_many_shots, UserWarning, r'class 1 \("dog"\) has only 1 image\(s\), fewer than DATASET.NUM_SHOTS=4'),
    (n_ctx_too_long, ValueError,
     r'"<100 context tokens> \{\}." for class ".*" .*is 105 tokens, more than the text encoder\'s context length '
     r"of 77: "
     r"the class name is 2 tokens, the learned context 100 \(TRAINER.COOP.N_CTX\).*Use TRAINER.COOP.N_CTX 72 or less"),
    (base_new_split_of_one_class, ValueError, r'SUBSAMPLE_CLASSES "base".*has 1 class\(es\)'),
    (output_folder_of_another_config, RuntimeError,
     r"holds a run made with a different config.*OPTIM.LR: 0.002 in the folder, 0.01 now.*"
     r"TRAINER.COOP.N_CTX: 4 in the folder, 8 now.*TRAIN.OVERWRITE True"),
    (corrupt_checkpoint, RuntimeError, r"is corrupt or truncated"),
    (resume_from_a_checkpoint_of_another_class_count, RuntimeError,
     r"made for a different run: num_classes 10 \(this run: 5\)"),
    (checkpoint_of_another_trainer, RuntimeError, r"trainer 'MaPLe' \(this run: 'CoOp'\)"),
    (split_label_is_a_word, ValueError,
     r'split_zhou_DescribableTextures.json": entry 1 of "train" .*the label \'b\' is not a non-negative integer'),
    (split_label_is_negative, ValueError,
     r'split_zhou_DescribableTextures.json": entry 0 of "train" .*the label -1 is not a non-negative integer'),
    (split_labels_with_a_gap, ValueError,
     r'split_zhou_DescribableTextures.json: the labels of "train" should be 0..C-1.*0, 1, 7: '
     r"label\(s\) 2, 3, 4, 5, 6 have no train image"),
    (split_label_with_two_names, ValueError,
     r'split_zhou_DescribableTextures.json: label 1 is named both "b" \("train" entry 1 \(b/0.png\)\) and "bee" '
     r'\("val" entry 0 \(b/1.png\)\)'),
    (label_never_trained, ValueError,
     r'split_zhou_DescribableTextures.json: "test" has label\(s\) 2 \("c"\) that "train" does not.*c/1.png'),
    (split_file_not_utf8, ValueError,
     r'split_zhou_DescribableTextures.json" is not UTF-8 text: byte 0xe9 at offset \d+ \(line 3\).*UTF-8'),
    (class_names_equal_once_normalised, ValueError,
     r'pets: labels 0 \("Golden Retriever", "train" entry 0 .*and 1 \("golden retriever", .*same class name'),
    (annotation_line_malformed, ValueError, r'trainval.txt", line 2: \'Abyssinian_2 one 1 1\' is not of the form'),
    (decompression_bomb, OSError, r'cannot read image ".*bomb.png": DecompressionBombError.*DATASET.SKIP_BAD_IMAGES'),
    (imagenet_with_a_flat_val_folder, FileNotFoundError,
     r'ImageNet: ".*imagenet/images/val" holds 0 folder\(s\) and 3 file\(s\) \(ILSVRC2012_val_00000001.JPEG.*'
     r"expected .*images/val/<wnid>/\*\.JPEG.*valprep.sh.*Nothing was cached"),
    (imagenet_val_missing_a_class, FileNotFoundError,
     r'class folders of ".*images/train" and ".*images/val" differ \(only in train: n01443537; only in val: -\)'),
    (imagenet_variant_without_class_folders, FileNotFoundError,
     r'ImageNetSketch: ".*imagenet-sketch/images" holds 0 folder\(s\) and 2 file\(s\).*expected .*<wnid>/<image>'),
    (split_built_from_folders_that_changed, ValueError,
     r'mine/split.json" was built by gatescope from the class folders .*\(added: zebra\)\. Delete it'),
    (fewshot_cache_with_a_forged_datum, ValueError,
     r'shot_1-seed_1.pkl": item 0 of "train" is not a valid Datum \(_label = .* is not a int\).*Delete it'),
    (batch_size_zero, ValueError,
     r"DATALOADER.TRAIN_X.BATCH_SIZE must be >= 1, got 0 \(set in the command-line options\)"),
    (print_freq_zero, ValueError, r"TRAIN.PRINT_FREQ must be >= 1, got 0"),
    (n_ctx_negative, ValueError, r"TRAINER.COOP.N_CTX must be >= 1, got -1"),
    (num_workers_negative, ValueError, r"DATALOADER.NUM_WORKERS must be >= 0, got -1"),
    (pixel_std_zero, ValueError, r"INPUT.PIXEL_STD\[0\] must be > 0 \(images are divided by it\), got 0.0"),
    (learning_rate_infinite, ValueError, r"OPTIM.LR must be >= 0 and <= 3.403e\+38 .*got inf"),
    (gate_learning_rate_overflows_float32, ValueError,
     r"OPTIM.LR x GATE.LR_MULT = 1e\+38 x 10 = 1e\+39 overflows float32 \(largest 3.403e\+38\)"),
    (gate_test_mode_mistyped, ValueError, r"GATE.TEST_MODE must be one of \('', 'soft', 'hard'\), got 'hrad'; "
                                          r"did you mean 'hard'\?"),
    (gate_target_mistyped, ValueError,
     r"GATE.TARGET must be one of \('length', 'token_dim', 'prefix', 'pool'\) \(the targets of CoOpGated\), "
     r"got 'lenght'; did you mean 'length'\?"),
    (gate_cond_mistyped, ValueError, r"GATE.COND must be one of \('patch_mean', 'image_feature'\) .*MaPLeGated.*"
                                     r"got 'patch'; did you mean 'patch_mean'\?"),
    (ivlp_without_prompts_in_either_tower, ValueError,
     r"TRAINER.IVLP prompts neither tower .*nothing would be learned"),
    (maple_gated_without_deep_layers, ValueError, r"TRAINER.MAPLE.PROMPT_DEPTH must be >= 2, got 1"),
    (entropy_remedy_without_direction, ValueError,
     r"REMEDY.ENTROPY.DIRECTION must be set to one of \('sharpen', 'flatten'\) when REMEDY.ENTROPY.WEIGHT > 0"),
    (config_file_mistyped, FileNotFoundError,
     r'--config-file ".*CoOp/dem.yaml": no such file; did you mean ".*configs/trainers/CoOp/demo.yaml"\?'),
    (pretrained_checkpoint_missing, FileNotFoundError,
     r'MODEL.BACKBONE.PRETRAINED: the checkpoint file ".*weights/clip.pt" does not exist'),
    (resume_folder_missing, FileNotFoundError, r'RESUME: the folder ".*no_such_run" does not exist'),
    (several_bad_values_reported_together, ValueError,
     r"3 config values cannot work:\n  - OPTIM.NAME must be one of .*got 'adamm'; did you mean 'adam'\?.*\n"
     r"  - TRAIN.PRINT_FREQ must be >= 1, got 0.*\n  - DIAGNOSTICS.EPS must be > 0 and <= 0.5, got 0.7"),
    (root_without_a_dataset, ValueError,
     r'--root ".*my_images" is given but no dataset is named.*configs/datasets/gatescope_demo.yaml'),
]


class Context:
    def __init__(self, root, tmp):
        self.root, self.tmp, self.out = root, tmp, tmp / "out"


@pytest.mark.parametrize("case, error, message", BAD_INPUTS, ids=[case.__name__ for case, _, _ in BAD_INPUTS])
def test_bad_input_fails_with_a_message_saying_what_to_fix(case, error, message, demo_root, tmp_path):
    with pytest.raises(error) as caught:
        case(Context(demo_root, tmp_path))
    assert re.search(message, str(caught.value), re.S), str(caught.value)


def test_the_table_covers_every_kind_of_bad_input():
    names = [case.__name__ for case, _, _ in BAD_INPUTS]
    print(f"\n{len(names)} bad inputs tried: {', '.join(names)}")
    assert len(set(names)) == len(names) >= 20


# ---------------------------------------------------------------- opt-ins that turn an error into a count
def test_skip_bad_images_skips_warns_once_and_counts(demo_root, tmp_path):
    from trainers.data import DatasetWrapper, Datum

    write_images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    cfg = setup(demo_root, tmp_path / "out", opts=("DATASET.SKIP_BAD_IMAGES", True))
    data = [Datum(str(tmp_path / n), i, 0, n) for i, n in enumerate(["a.png", "bad.png", "b.png"])]
    wrapper = DatasetWrapper(cfg, data)
    with pytest.warns(UserWarning, match=r"Skipping unreadable image .*bad.png"):
        items = [wrapper[i] for i in range(3)] + [wrapper[1]]
    assert [item["impath"].rsplit("/", 1)[-1] for item in items] == ["a.png", "b.png", "b.png", "b.png"]
    assert wrapper.bad_images == [str(tmp_path / "bad.png")]


def test_overwrite_replaces_the_old_run_and_a_same_config_resumes(demo_root, tmp_path):
    from trainers.engine.utils import claim_output_dir

    out = str(tmp_path)
    first = setup(demo_root, out, opts=("OPTIM.LR", 0.002))
    assert claim_output_dir(first, out) == []
    os.makedirs(tmp_path / "prompt_learner")
    (tmp_path / "results.json").write_text("{}")
    # Same config but a new folder name and more epochs: the same run, extended.
    assert claim_output_dir(setup(demo_root, out, opts=("OPTIM.LR", 0.002, "OPTIM.MAX_EPOCH", 40)), out) == []
    assert (tmp_path / "prompt_learner").is_dir()
    other = setup(demo_root, out, opts=("OPTIM.LR", 0.01, "TRAIN.OVERWRITE", True))
    assert claim_output_dir(other, out, overwrite=True, previous_run_paths=["prompt_learner", "results.json"]) \
        == ["OPTIM.LR"]
    assert not (tmp_path / "prompt_learner").exists() and not (tmp_path / "results.json").exists()
    assert "LR: 0.01" in (tmp_path / "config.yaml").read_text()


# ---------------------------------------------------------------- failures inside a training run
def poison_gradients(trainer, group, steps):
    """Make the gradient of `group` NaN at the given (0-based) global steps."""
    params = next(g["params"] for g in trainer.optim.param_groups if g["name"] == group)
    calls = {"n": 0}

    def hook(grad):
        step = calls["n"] // len(params)
        calls["n"] += 1
        return grad * float("nan") if step in steps else grad
    for p in params:
        p.register_hook(hook)


def test_nan_gradient_stops_naming_step_group_and_last_finite_values_after_writing_diagnostics(demo_root, tmp_path):
    from trainers.engine.trainer import NonFiniteError

    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated",
                                 opts=("OPTIM.MAX_EPOCH", 1, "DATASET.NUM_SHOTS", 8, "DIAGNOSTICS.PLOTS", False))
    poison_gradients(trainer, "gate", steps={1})
    with pytest.raises(NonFiniteError, match=r"parameter group 'gate' at epoch 1/1, batch 2/2 \(global step 1\): "
                                             r"\d+ NaN and 0 Inf among .*last finite step \(epoch 1/1, batch 1/2 "
                                             r"\(global step 0\)\): loss [\d.]+, gradient L2 by group: prompt "
                                             r"[\d.e-]+, gate [\d.e-]+.*TRAIN.NONFINITE skip"):
        trainer.train()
    summary = json.loads((tmp_path / "diagnostics" / "summary.json").read_text())
    assert "NonFiniteError" in summary["aborted"] and summary["steps_logged"] == 2
    steps = [json.loads(line) for line in open(tmp_path / "diagnostics" / "steps.jsonl")]
    assert [s["step"] for s in steps] == [0, 1]


def test_nan_loss_is_skipped_and_counted_with_nonfinite_skip(demo_root, tmp_path):
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated",
                                 opts=("OPTIM.MAX_EPOCH", 2, "DATASET.NUM_SHOTS", 8, "TRAIN.NONFINITE", "skip",
                                       "DIAGNOSTICS.PLOTS", False, "TRAIN.CHECKPOINT_FREQ", 1))
    compute_losses, calls = trainer.compute_losses, {"n": 0}

    def nan_at_step_2(output, label):
        losses = compute_losses(output, label)
        calls["n"] += 1
        if calls["n"] == 2:
            losses["ce"] = losses["ce"] * float("nan")
        return losses
    trainer.compute_losses = nan_at_step_2
    poison_gradients(trainer, "prompt", steps={2})  # the third backward (the NaN loss never reaches backward)
    trainer.train()
    assert trainer.nonfinite_skips == 2
    assert json.loads((tmp_path / "diagnostics" / "summary.json").read_text())["nonfinite_skips"] == 2
    assert torch.load(tmp_path / "prompt_learner" / "model.pth.tar-2", weights_only=True)["nonfinite_skips"] == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.prompt_learner.parameters())


class FailingHook:
    """A third-party plugin whose after_step raises at its second call."""

    def __init__(self):
        self.calls = 0

    @hookimpl
    def after_step(self, context):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("lost my log file")


def test_plugin_raising_in_a_lifecycle_hook_is_named_with_its_distribution(demo_root, tmp_path, monkeypatch):
    from gates.manager import PluginError
    from trainers.plugins import load_plugins

    plugins = load_plugins(autoload=False)
    plugins.register(FailingHook(), "flaky-logger", "flaky-logger-dist", "0.3")
    monkeypatch.setattr("trainers.plugins._MANAGER", plugins)
    trainer = build_demo_trainer(demo_root, tmp_path, opts=FAST + ("DATASET.NUM_SHOTS", 8))
    with pytest.raises(PluginError, match=r"plugin 'flaky-logger' \(distribution flaky-logger-dist 0.3\) failed in "
                                          r"hook after_step: RuntimeError: lost my log file"):
        trainer.train()


def test_diagnostics_failure_stops_the_run_without_corrupting_what_resumes(demo_root, tmp_path, monkeypatch):
    from diagnostics.recorder import RunDiagnostics
    from gates.manager import PluginError

    opts = ("OPTIM.MAX_EPOCH", 2, "DATASET.NUM_SHOTS", 8, "TRAIN.CHECKPOINT_FREQ", 1, "DIAGNOSTICS.PLOTS", False,
            "DIAGNOSTICS.COUNTERFACTUAL", False, "DIAGNOSTICS.INPUT_TESTS", False, "TEST.NO_TEST", True)
    straight = build_demo_trainer(demo_root, tmp_path / "straight", trainer="CoOpGated", opts=opts)
    straight.train()

    after_epoch = RunDiagnostics.after_epoch

    def broken_in_epoch_2(self):
        if self.trainer.epoch == 1:
            raise ZeroDivisionError("a metric divided by zero")
        after_epoch(self)
    monkeypatch.setattr(RunDiagnostics, "after_epoch", broken_in_epoch_2)
    broken = build_demo_trainer(demo_root, tmp_path / "run", trainer="CoOpGated", opts=opts)
    with pytest.raises(PluginError, match=r"plugin 'diagnostics.plugin' \(distribution gatescope built-in\) failed "
                                          r"in hook after_epoch: ZeroDivisionError.*same command resumes"):
        broken.train()
    assert not (tmp_path / "run" / "prompt_learner" / "model.pth.tar-2").exists()  # epoch 2 never committed

    monkeypatch.setattr(RunDiagnostics, "after_epoch", after_epoch)  # fixed: the same command resumes
    resumed = build_demo_trainer(demo_root, tmp_path / "run", trainer="CoOpGated", opts=opts)
    resumed.train()
    for a, b in zip(resumed.model.prompt_learner.parameters(), straight.model.prompt_learner.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gate_out_of_range_in_training_is_caught_at_the_first_step_with_its_name(demo_root, tmp_path, monkeypatch):
    from gates import Gate
    from gates.contract import GateError
    from gates.manager import GateEntry
    from trainers.plugins import load_plugins

    class TrainsWild(Gate):
        """Passes the build-time check (eval mode), returns 1.5 in training."""

        kind = "mask"

        def forward(self, cond):
            value = 1.5 if self.training else 0.5
            return torch.full((cond.shape[0], self.num_options), value) + 0 * cond[:, :1]

    plugins = load_plugins(autoload=False)
    info = plugins.register(object(), "wild-gate", "wild-gate-dist", "1.0")
    plugins.gates["wild"] = GateEntry("wild", lambda cfg, k, d, kind: TrainsWild(k, d), info)
    monkeypatch.setattr("trainers.plugins._MANAGER", plugins)
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated", opts=FAST + ("GATE.NAME", "wild"))
    with pytest.raises(GateError, match=r"gate 'wild' returned values in \[1.5, 1.5\].*first training step"):
        trainer.train()
