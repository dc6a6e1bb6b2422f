"""Where a protocol run writes its output, and reading that back from a folder's path.

gatescope's layout (CoCoOp's base-to-new layout, extended to the other protocols the same way):

    <output>/fewshot/<dataset>/shots_<K>/<trainer>/<cfg>/seed<S>
    <output>/base2new/train_base/<dataset>/shots_<K>/<trainer>/<cfg>/seed<S>
    <output>/base2new/test_new/<dataset>/shots_<K>/<trainer>/<cfg>/seed<S>
    <output>/xd/train/<source>/shots_<K>/<trainer>/<cfg>/seed<S>     (cross-dataset: train on ImageNet)
    <output>/xd/test/<target>/shots_<K>/<trainer>/<cfg>/seed<S>      (evaluated from xd/train)
    <output>/dg/test/<target>/shots_<K>/<trainer>/<cfg>/seed<S>      (domain generalisation, from xd/train)

`<dataset>` is the dataset config's name (`configs/datasets/<dataset>.yaml`, or the label a grid
gives it), `<cfg>` the trainer config's name; a run with a gate chosen by `GATE.NAME g` has
`<cfg>@g`, and a run of a grid's named variant v (a set of options, e.g. a remedy) `<cfg>~v` or
`<cfg>@g~v`; a grid's oracle run on domain d `<cfg>~oracle.d`. `scripts/*.sh` write the same
layout (keep the two in step). The parser also reads the layouts of the original code, so old
runs can be summarised beside new ones:

    <output>/<dataset>/<trainer>/<cfg>_<K>shots/<variant>/seed<S>   (CoOp's main.sh: few-shot)
    <output>/<dataset>/<trainer>/<cfg>_<K>shots/seed<S>             (CoCoOp / MaPLe: ImageNet training)
    <output>/evaluation/<trainer>/<cfg>_<K>shots/<dataset>/seed<S>  (CoCoOp / MaPLe: xd and dg tests)
"""
import os
import re
from dataclasses import dataclass

PROTOCOLS = ("fewshot", "base2new", "xd", "dg")
# The phase folders of each protocol, in the order they run; few-shot has no phase folder.
PHASES = {"fewshot": ("",), "base2new": ("train_base", "test_new"), "xd": ("train", "test"), "dg": ("test",)}
# The target datasets of the published cross-dataset and domain-generalisation tables.
XD_SOURCE = "imagenet"
XD_TARGETS = ("caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
              "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
DG_TARGETS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
GATE_SEPARATOR = "@"
# "+" would read better but occurs in real config names (IVLP's vit_b16_c2_ep5_batch4_2+2ctx).
VARIANT_SEPARATOR = "~"
# A grid's oracle run on domain d is the variant `oracle.d` of its config (grid.py, "oracle").
ORACLE_VARIANT_PREFIX = "oracle."


@dataclass
class RunKey:
    """What a run folder's path says about the run. `phase` is "" for few-shot runs."""

    protocol: str
    phase: str
    dataset: str
    trainer: str
    cfg: str
    shots: int
    seed: int


@dataclass(frozen=True)
class CfgLabel:
    """A `<cfg>` folder name taken apart: `demo@mlp~gradnorm` -> ("demo", "mlp", "gradnorm")."""

    config: str
    gate: str = ""
    variant: str = ""

    def __str__(self):
        return cfg_label(self.config, self.gate, self.variant)


def cfg_label(cfg, gate="", variant=""):
    """The `<cfg>` folder name: the config's name, plus `@<gate>` when a gate is chosen and
    `~<variant>` for a grid's named variant."""
    label = f"{cfg}{GATE_SEPARATOR}{gate}" if gate else cfg
    return f"{label}{VARIANT_SEPARATOR}{variant}" if variant else label


def oracle_label(cfg, domain):
    """The `<cfg>` folder name of the oracle's run on `domain`: `<cfg>~oracle.<domain>`."""
    return cfg_label(cfg, "", f"{ORACLE_VARIANT_PREFIX}{domain}")


def oracle_domain(label):
    """The domain of an oracle run's `<cfg>` folder name, or None when it is not one."""
    variant = split_cfg_label(label).variant
    return variant[len(ORACLE_VARIANT_PREFIX):] if variant.startswith(ORACLE_VARIANT_PREFIX) else None


def split_cfg_label(label):
    """The `CfgLabel` of a `<cfg>` folder name (the inverse of `cfg_label`)."""
    rest, _, variant = str(label).partition(VARIANT_SEPARATOR)
    config, _, gate = rest.partition(GATE_SEPARATOR)
    return CfgLabel(config, gate, variant)


def phase_sibling(path, phase):
    """The folder of the same run in another phase of its protocol (a base-to-new `train_base`
    run's `test_new` partner, and back), or None when `path` is not in a phase folder of
    gatescope's (and CoCoOp's) layout. Found by swapping the phase folder in the path, so
    it works whatever part of the tree was handed to `gatescope summarize`."""
    key = parse_run_dir(path)
    if key is None or key.phase == phase or phase not in PHASES.get(key.protocol, ()):
        return None
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    # <protocol>/<phase> followed by the 5 folders dataset/shots_K/trainer/cfg/seedS
    if len(parts) < 7 or parts[-7:-5] != [key.protocol, key.phase]:
        return None
    parts[-6] = phase
    return os.sep.join(parts)


def run_dir(output, protocol, phase, dataset, shots, trainer, cfg, seed):
    """The folder of one run in gatescope's layout (see the module docstring)."""
    if protocol not in PHASES:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if phase not in PHASES[protocol]:
        raise ValueError(f"protocol {protocol!r} has the phases {PHASES[protocol]}, not {phase!r}")
    parts = [output, protocol, phase, dataset, f"shots_{shots}", trainer, cfg, f"seed{seed}"]
    return os.path.join(*[p for p in parts if p != ""])


_NAME = r"[^/]+"
_LAYOUTS = [
    # gatescope's own (and CoCoOp's base-to-new) layouts
    (re.compile(rf"(?:^|/)(?P<protocol>base2new)/(?P<phase>train_base|test_new)/(?P<dataset>{_NAME})/"
                rf"shots_(?P<shots>\d+)/(?P<trainer>{_NAME})/(?P<cfg>{_NAME})/seed(?P<seed>\d+)$"), {}),
    (re.compile(rf"(?:^|/)(?P<protocol>xd)/(?P<phase>train|test)/(?P<dataset>{_NAME})/"
                rf"shots_(?P<shots>\d+)/(?P<trainer>{_NAME})/(?P<cfg>{_NAME})/seed(?P<seed>\d+)$"), {}),
    (re.compile(rf"(?:^|/)(?P<protocol>dg)/(?P<phase>test)/(?P<dataset>{_NAME})/"
                rf"shots_(?P<shots>\d+)/(?P<trainer>{_NAME})/(?P<cfg>{_NAME})/seed(?P<seed>\d+)$"), {}),
    (re.compile(rf"(?:^|/)(?P<protocol>fewshot)/(?P<dataset>{_NAME})/"
                rf"shots_(?P<shots>\d+)/(?P<trainer>{_NAME})/(?P<cfg>{_NAME})/seed(?P<seed>\d+)$"), {"phase": ""}),
    # the original repositories' layouts
    (re.compile(rf"(?:^|/)evaluation/(?P<trainer>{_NAME})/(?P<cfg>{_NAME})_(?P<shots>\d+)shots/"
                rf"(?P<dataset>{_NAME})/seed(?P<seed>\d+)$"), {"protocol": None, "phase": "test"}),
    (re.compile(rf"(?:^|/)(?P<dataset>{_NAME})/(?P<trainer>{_NAME})/(?P<cfg>{_NAME})_(?P<shots>\d+)shots/"
                rf"(?P<variant>{_NAME})/seed(?P<seed>\d+)$"), {"protocol": "fewshot", "phase": ""}),
    (re.compile(rf"(?:^|/)(?P<dataset>{_NAME})/(?P<trainer>{_NAME})/(?P<cfg>{_NAME})_(?P<shots>\d+)shots/"
                rf"seed(?P<seed>\d+)$"), {"protocol": "fewshot", "phase": ""}),
]


def parse_run_dir(path):
    """The `RunKey` a run folder's path encodes, or None when it follows none of the layouts."""
    text = os.path.normpath(os.path.abspath(path)).replace(os.sep, "/")
    for pattern, fixed in _LAYOUTS:
        match = pattern.search(text)
        if match is None:
            continue
        fields = {**match.groupdict(), **fixed}
        variant = fields.pop("variant", None)
        if variant:  # CoOp's main.sh puts N_CTX / CSC / class position in a folder of their own
            fields["cfg"] = f"{fields['cfg']}/{variant}"
        if fields["protocol"] is None:  # CoCoOp's "evaluation" folder holds both xd and dg tests
            fields["protocol"] = "dg" if fields["dataset"] in DG_TARGETS else "xd"
        return RunKey(protocol=fields["protocol"], phase=fields["phase"], dataset=fields["dataset"],
                      trainer=fields["trainer"], cfg=fields["cfg"], shots=int(fields["shots"]),
                      seed=int(fields["seed"]))
    return None
