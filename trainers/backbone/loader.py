"""Turn MODEL.BACKBONE.NAME and MODEL.BACKBONE.PRETRAINED into a frozen open_clip `CLIP`.

Names: CoOp's (OpenAI's) names such as `ViT-B/16`, `RN50`, `ViT-L/14@336px`, any name in
`open_clip.list_models()`, and `gatescope-tiny` (a 3.4 M-parameter config for tests, registered
from `model_configs/` when this module is imported).

Weights (`pretrained`):
  "" / "none" / "random"   random initialisation, no file or network access;
  an open_clip tag         e.g. "openai", "laion2b_s34b_b88k": open_clip downloads (or finds in
                           its cache) the weights. For "openai" the file that OpenAI's `clip`
                           package caches, `~/.cache/clip/ViT-B-16.pt` (folder overridable with
                           GATESCOPE_CLIP_CACHE), is used first, since every CoOp user has it;
  a file                   .pt/.pth/.bin/.safetensors holding an open_clip state dict, an
                           OpenAI-format state dict, or an OpenAI TorchScript archive. Nothing in
                           the file runs: state dicts are read with weights_only=True, TorchScript
                           archives as data (torchscript.py); a file that needs its code to load
                           is refused unless GATESCOPE_TRUST_WEIGHTS=1;
  "local-dir:FOLDER"       a folder with open_clip_config.json and weights, as open_clip reads it;
  "gatescope-demo"         for `gatescope-tiny` only: weights pretrained on generated shape
                           images, shipped with gatescope and unpacked into the cache at first
                           use (demo_weights.py); a cached file that does not load is a damaged
                           cache (DamagedCacheError names the file to delete);
  "gatescope-demo-sparse"  the same pretraining with only the caption tokens' embedding rows as
                           parameters (differs from "gatescope-demo" in float rounding only);
                           not shipped: pretrained into the cache at first use.

Activation: OpenAI's CLIPs were trained with QuickGELU, x * sigmoid(1.702 x). Their weights in
a plain-GELU architecture load without any error and give silently worse features, so the
architecture is chosen from where the weights come from, never from the name alone:
  - a tag: QuickGELU exactly when open_clip's record of that tag says so ("openai": yes);
  - a TorchScript archive (only OpenAI ships those) or a state dict carrying OpenAI's
    bookkeeping entries (`input_resolution`, `context_length`, `vocab_size`): QuickGELU;
  - otherwise (random weights, other state dicts): CoOp's names mean OpenAI's models, so
    QuickGELU; an open_clip name means exactly the architecture that config describes.
"""
import difflib
import json
import logging
import os
import pickle
import sys
import warnings
from pathlib import Path

import torch

from ..engine.trust import (TRUST_WEIGHTS_ENV, describe_load_failure, is_torchscript_archive, scan_pickles,
                            trusted_by_env)
from ..lazy_import import LazyModule
from .demo_weights import DEMO_VARIANTS, DamagedCacheError, ensure_demo_weights
from .torchscript import NeedsCodeError, read_torchscript_state_dict

logger = logging.getLogger(__name__)

TINY_MODEL_NAME = "gatescope-tiny"
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"

# OpenAI's model names (`clip.available_models()`, the names CoOp's configs use) -> the open_clip
# architecture with the same shapes. The QuickGELU choice is made separately (module docstring).
COOP_BACKBONE_NAMES = {
    "RN50": "RN50",
    "RN101": "RN101",
    "RN50x4": "RN50x4",
    "RN50x16": "RN50x16",
    "RN50x64": "RN50x64",
    "ViT-B/32": "ViT-B-32",
    "ViT-B/16": "ViT-B-16",
    "ViT-L/14": "ViT-L-14",
    "ViT-L/14@336px": "ViT-L-14-336",
}

RANDOM_WEIGHTS = ("", "none", "random")
OPENAI_TAG = "openai"
CLIP_CACHE_ENV = "GATESCOPE_CLIP_CACHE"
DEFAULT_CLIP_CACHE = "~/.cache/clip"
LOCAL_DIR_PREFIX = "local-dir:"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
QUICKGELU_SUFFIX = "-quickgelu"
# Entries that OpenAI's exported models keep in their state dict; open_clip's CLIP has none.
OPENAI_STATE_DICT_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def _register_model_configs(open_clip):
    # add_model_config appends to a global search path and rescans it; do it once per process
    # even if this module is reloaded.
    if TINY_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


# Imported (and given gatescope's model configs) when a backbone is first resolved or built: a
# config check that fails on a typo does not wait seconds for open_clip and timm (lazy_import.py).
open_clip = LazyModule("open_clip", after_import=_register_model_configs)
if "open_clip" in sys.modules:  # already imported by someone else: register now, at no cost
    open_clip._load()


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------

def is_coop_name(name):
    """True for OpenAI's/CoOp's model names (`ViT-B/16`, `RN50`, ...)."""
    return name in COOP_BACKBONE_NAMES


def resolve_backbone_name(name):
    """The open_clip architecture for a backbone name: `ViT-B/16` -> `ViT-B-16`, open_clip names as is.

    Raises ValueError for a name that is neither CoOp's nor registered with open_clip.
    """
    name = str(name).strip()
    if name in COOP_BACKBONE_NAMES:
        return COOP_BACKBONE_NAMES[name]
    if name in open_clip.list_models():
        return name
    known = list(COOP_BACKBONE_NAMES) + open_clip.list_models()
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise ValueError(
        f"Unknown backbone '{name}' (MODEL.BACKBONE.NAME). Expected one of CoOp's names "
        f"({', '.join(COOP_BACKBONE_NAMES)}), '{TINY_MODEL_NAME}', or any open_clip architecture "
        f"(open_clip.list_models() holds the rest, {len(open_clip.list_models())} names).{hint}"
    )


def _builds_plain_clip(model_cfg):
    """Whether a config builds `open_clip.model.CLIP` (text tower on the model itself)."""
    text_cfg = model_cfg.get("text_cfg", {})
    return not (model_cfg.get("custom_text") or "multimodal_cfg" in model_cfg
                or "hf_model_name" in text_cfg)


def available_backbones():
    """Names `load_clip` accepts: CoOp's names, then open_clip's architectures that build a CLIP."""
    open_clip_names = [n for n in open_clip.list_models()
                       if _builds_plain_clip(open_clip.get_model_config(n))]
    return list(COOP_BACKBONE_NAMES) + open_clip_names


def _check_plain_clip(arch, model_cfg):
    if not _builds_plain_clip(model_cfg):
        raise ValueError(
            f"Backbone '{arch}' builds an open_clip CustomTextCLIP/CoCa (its text tower is a "
            "separate module), but the prompt learners read the token embedding and text "
            "transformer off an open_clip CLIP. Choose a CLIP architecture, e.g. ViT-B/16; "
            "available_backbones() lists them."
        )


def _base_architecture(arch):
    """`ViT-B-16-quickgelu` -> `ViT-B-16`; architectures without a QuickGELU twin are their own base."""
    if arch.endswith(QUICKGELU_SUFFIX):
        base = arch[: -len(QUICKGELU_SUFFIX)]
        if base in open_clip.list_models():
            return base
    return arch


def _with_activation(arch, quick_gelu):
    """(architecture name, force_quick_gelu) that builds `arch`, with QuickGELU if `quick_gelu`.

    Never drops the QuickGELU an architecture's own config asks for (`ViT-B-16-quickgelu`).
    """
    if not quick_gelu:
        return arch, False
    base = _base_architecture(arch)
    if open_clip.get_model_config(base).get("quick_gelu", False):
        return base, False
    twin = base + QUICKGELU_SUFFIX
    if twin in open_clip.list_models():
        return twin, False
    return base, True


# ---------------------------------------------------------------------------------------------
# Where weights come from
# ---------------------------------------------------------------------------------------------

def clip_cache_dir():
    """The folder OpenAI's `clip` package downloads to (GATESCOPE_CLIP_CACHE overrides it)."""
    return Path(os.path.expanduser(os.environ.get(CLIP_CACHE_ENV) or DEFAULT_CLIP_CACHE))


def openai_cache_file(name):
    """Path where OpenAI's `clip` package keeps the weights of backbone `name`.

    OpenAI names its files after its download URL (`ViT-B-16.pt`, `RN50.pt`,
    `ViT-L-14-336px.pt`); architectures OpenAI never released use `<architecture>.pt`.
    """
    base = _base_architecture(resolve_backbone_name(name))
    url = open_clip.get_pretrained_url(base, OPENAI_TAG)
    filename = os.path.basename(url) if url else f"{base}.pt"
    return clip_cache_dir() / filename


class UntrustedWeightsError(RuntimeError):
    """A weights file that only loads by running code from it, and the user has not opted in."""

    def __init__(self, path, what):
        self.path = path
        super().__init__(
            f"Refusing to load weights from {path}: {what}. Loading it would run code from the file "
            f"(not read with torch.load(weights_only=True), nor as plain TorchScript data). Only if you "
            f"trust where this file came from, set the environment variable {TRUST_WEIGHTS_ENV}=1; "
            "otherwise save its weights as a plain state dict (torch.save(model.state_dict(), path)) "
            "or a .safetensors file."
        )


def _read_checkpoint(path, trust=None):
    """(state dict, is_openai_format) from a checkpoint file of any supported format.

    Nothing from the file runs unless `trust` (default: env GATESCOPE_TRUST_WEIGHTS) is set:
    state dicts are read with weights_only=True, TorchScript archives as data
    (torchscript.read_torchscript_state_dict). Raises UntrustedWeightsError for a file that needs
    code to load, RuntimeError naming the file for one that cannot be read at all.
    """
    trust = trusted_by_env(TRUST_WEIGHTS_ENV) if trust is None else trust
    if is_torchscript_archive(path):
        return _read_torchscript(path, trust), True
    state_dict = _read_state_dict(path, trust)
    if not isinstance(state_dict, dict) or not state_dict:
        raise RuntimeError(f"{path} holds no state dict (found {type(state_dict).__name__}).")
    is_openai = any(key in state_dict for key in OPENAI_STATE_DICT_EXTRAS)
    return state_dict, is_openai


def _read_torchscript(path, trust):
    # OpenAI's archives are TorchScript; torch.jit.load would run the program they carry, so their
    # tensors are read as data, and only an archive that cannot be read that way needs trust.
    try:
        return read_torchscript_state_dict(path)
    except NeedsCodeError as err:
        if not trust:
            raise UntrustedWeightsError(path, f"it is a TorchScript archive whose state needs its code ({err})") from err
    except ValueError as err:
        raise RuntimeError(
            f"Could not read the TorchScript archive {path} ({err}). If it is a partial "
            "download, delete it so it is fetched again, or replace it with OpenAI's file."
        ) from err
    try:
        with warnings.catch_warnings():
            # torch deprecates TorchScript, but OpenAI's files are TorchScript all the same.
            warnings.simplefilter("ignore", FutureWarning)
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except Exception as err:
        raise RuntimeError(f"Could not read the TorchScript archive {path} ({err}).") from err


def _read_state_dict(path, trust):
    """The weights in a .safetensors or torch.save file, unwrapped as open_clip does."""
    if str(path).endswith(".safetensors"):
        checkpoint = _read_safetensors(path)
    else:
        try:
            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
            scan = scan_pickles(path)
            if not scan.unsafe:
                raise RuntimeError(
                    f"Could not read weights from {path} ({describe_load_failure(err)}). "
                    "Expected a state dict saved with torch.save(model.state_dict()) (optionally under "
                    "a 'state_dict' key), a .safetensors file, or an OpenAI TorchScript archive; the "
                    "file is damaged or none of these."
                ) from err
            if not trust:
                names = ", ".join(scan.unsafe[:6]) + (", ..." if len(scan.unsafe) > 6 else "")
                raise UntrustedWeightsError(path, f"it pickles Python objects ({names})") from err
            checkpoint = _read_trusted_pickle(path, scan)
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if isinstance(checkpoint, dict) and checkpoint and next(iter(checkpoint)).startswith("module."):
        checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}  # DDP's prefix
    return checkpoint


def _read_safetensors(path):
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as err:
        raise RuntimeError(f"Could not read weights from {path} ({type(err).__name__}: {err}); "
                           "the .safetensors file is damaged or not a safetensors file.") from err


def _read_trusted_pickle(path, scan):
    """Unpickle a weights file the user trusts (GATESCOPE_TRUST_WEIGHTS=1): this may run its code."""
    try:
        if scan.kind == "pickle":  # written with pickle.dump, which torch.load cannot read
            with open(path, "rb") as f:
                return pickle.load(f)
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as err:
        raise RuntimeError(f"Could not read weights from {path} even as a trusted pickle "
                           f"({describe_load_failure(err)}).") from err


def _describe_weights(state_dict):
    """One line on the architecture a CLIP state dict holds, for mismatch errors."""
    try:
        text_width = state_dict["ln_final.weight"].shape[0]
        text_layers = len({k.split(".")[2] for k in state_dict if k.startswith("transformer.resblocks.")})
        embed_dim = state_dict["text_projection"].shape[1]
        if "visual.proj" in state_dict:
            width, _, patch, _ = state_dict["visual.conv1.weight"].shape
            layers = len({k.split(".")[3] for k in state_dict
                          if k.startswith("visual.transformer.resblocks.")})
            grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = f"ViT width {width}, {layers} layers, patch {patch}, image {patch * grid}"
        else:
            vision = "ResNet vision tower"
        return (f"{vision}; text width {text_width}, {text_layers} layers; embed dim {embed_dim}")
    except (KeyError, IndexError, ValueError, AttributeError):
        return "not a CLIP state dict in open_clip/OpenAI layout"


def _load_weights(model, state_dict, source, arch):
    # TorchScript records every buffer, also those a module marks non-persistent (open_clip's
    # causal attn_mask), so an archive traced from an open_clip model carries them; they are
    # rebuilt by the constructor, not loaded.
    non_persistent = set(dict(model.named_buffers())) - set(model.state_dict())
    dropped = set(OPENAI_STATE_DICT_EXTRAS) | non_persistent
    state_dict = {k: v for k, v in state_dict.items() if k not in dropped}
    # Some checkpoints store logit_scale as shape [1], open_clip's CLIP as a scalar.
    if "logit_scale" in state_dict and state_dict["logit_scale"].shape != model.logit_scale.shape:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(model.logit_scale.shape)
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    resized = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
               for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", resized)):
        if keys:
            problems.append(f"{len(keys)} {label} (e.g. {'; '.join(keys[:3])})")
    if problems:
        raise RuntimeError(
            f"The weights in {source} do not fit architecture '{arch}': {', '.join(problems)}. "
            f"The file holds: {_describe_weights(state_dict)}. Set MODEL.BACKBONE.NAME to the "
            "architecture the checkpoint was saved from."
        )
    model.load_state_dict(state_dict, strict=True)


class _DropRandomInitNotice(logging.Filter):
    """Hides open_clip's "initialized randomly" warning for a model whose weights we load next."""

    def filter(self, record):
        return not record.getMessage().startswith("No pretrained weights loaded")


def _fresh_model(arch, force_quick_gelu, weights_follow=False):
    # open_clip warns on the root logger whenever it builds without weights; when this module
    # loads a checkpoint right after, that warning would tell the user the opposite of the truth.
    notice_filter = _DropRandomInitNotice()
    if weights_follow:
        logging.getLogger().addFilter(notice_filter)
    try:
        return open_clip.create_model(arch, pretrained=None, precision="fp32", device="cpu",
                                      force_quick_gelu=force_quick_gelu)
    finally:
        logging.getLogger().removeFilter(notice_filter)


def _load_from_file(name, arch, path, trust=None):
    state_dict, is_openai = _read_checkpoint(path, trust)
    quick_gelu = is_openai or is_coop_name(name)
    arch, force = _with_activation(arch, quick_gelu)
    logger.info("Backbone %s: weights from %s (%s format), architecture %s%s", name, path,
                "OpenAI" if is_openai else "open_clip", arch, " + QuickGELU" if force else "")
    model = _fresh_model(arch, force, weights_follow=True)
    _load_weights(model, state_dict, path, arch)
    return model


def _load_demo_weights(name, arch, tag):
    path = Path(ensure_demo_weights(tag=tag))
    try:
        # gatescope wrote this file itself, as a plain state dict: no trust route, whatever the
        # environment says, and anything unreadable in it is damage, not a foreign format.
        return _load_from_file(name, arch, path, trust=False)
    except (RuntimeError, ValueError) as err:
        raise DamagedCacheError(
            f"The cached demo backbone weights {path} are damaged and were not loaded ({err}). "
            f"Delete that file; the next run pretrains the demo CLIP again and caches it anew."
        ) from err


def _tag_quick_gelu(arch, tag):
    """QuickGELU flag of open_clip's record for (architecture, tag), or None for an unknown tag."""
    base = _base_architecture(arch)
    for candidate in (base, base + QUICKGELU_SUFFIX):
        cfg = open_clip.get_pretrained_cfg(candidate, tag)
        if cfg:
            return bool(cfg.get("quick_gelu", False))
    return None


def _load_from_tag(name, arch, tag):
    quick_gelu = _tag_quick_gelu(arch, tag)
    if quick_gelu is None:
        tags = open_clip.list_pretrained_tags_by_model(_base_architecture(arch))
        known = f"its tags: {', '.join(tags)}" if tags else "open_clip has no weights for it"
        if tag == OPENAI_TAG:
            found = (f"OpenAI released no weights for '{arch}' ({known}) and "
                     f"{openai_cache_file(name)} does not exist")
        else:
            found = f"'{tag}' is neither an existing file nor an open_clip tag for '{arch}' ({known})"
        raise ValueError(
            f"MODEL.BACKBONE.PRETRAINED: {found}. Give a tag, a path to a checkpoint "
            f"({'/'.join(CHECKPOINT_SUFFIXES)}), or '' for random weights."
        )
    if arch.endswith(QUICKGELU_SUFFIX) and not quick_gelu and _base_architecture(arch) != arch:
        raise ValueError(
            f"Tag '{tag}' was trained with GELU but '{name}' asks for QuickGELU; use "
            f"'{_base_architecture(arch)}' as MODEL.BACKBONE.NAME."
        )
    arch, force = _with_activation(arch, quick_gelu)
    try:
        return open_clip.create_model(arch, pretrained=tag, precision="fp32", device="cpu",
                                      force_quick_gelu=force)
    except Exception as err:
        if tag == OPENAI_TAG:
            todo = (f"put OpenAI's {openai_cache_file(name).name} into {clip_cache_dir()} "
                    f"(or point {CLIP_CACHE_ENV} at the folder holding it), or set "
                    "MODEL.BACKBONE.PRETRAINED to a local checkpoint file")
        else:
            todo = ("run once with network access so open_clip caches the weights, or set "
                    "MODEL.BACKBONE.PRETRAINED to a local checkpoint file")
        raise RuntimeError(
            f"Could not get weights '{tag}' for '{arch}' from open_clip ({type(err).__name__}: "
            f"{err}). Without network access: {todo}."
        ) from err


def _load_from_local_dir(name, folder_spec):
    folder = Path(os.path.expanduser(folder_spec[len(LOCAL_DIR_PREFIX):]))
    if not (folder / "open_clip_config.json").is_file():
        raise FileNotFoundError(
            f"'{folder_spec}': expected a folder holding open_clip_config.json and the weights "
            f"(as open_clip's save/push writes it); {folder} "
            f"{'has no open_clip_config.json' if folder.is_dir() else 'does not exist'}."
        )
    with open(folder / "open_clip_config.json", encoding="utf-8") as f:
        config = json.load(f)
    model_cfg = config.get("model_cfg", config)
    _check_plain_clip(folder_spec, model_cfg)
    if name and not name.startswith(LOCAL_DIR_PREFIX):
        named_cfg = open_clip.get_model_config(_base_architecture(resolve_backbone_name(name)))
        core = ("embed_dim", "vision_cfg", "text_cfg")
        if any(model_cfg.get(k) != named_cfg.get(k) for k in core):
            raise ValueError(
                f"MODEL.BACKBONE.NAME '{name}' does not describe the model in {folder} "
                f"(its open_clip_config.json: {', '.join(f'{k}={model_cfg.get(k)}' for k in core)}). "
                "Set MODEL.BACKBONE.NAME to that architecture, or to the same 'local-dir:' folder."
            )
    return open_clip.create_model(LOCAL_DIR_PREFIX + str(folder), precision="fp32", device="cpu")


def _looks_like_path(value):
    return (os.sep in value or "/" in value or value.startswith(("~", "."))
            or value.lower().endswith(CHECKPOINT_SUFFIXES))


def _load_named(name, arch, pretrained):
    """The CLIP of architecture `arch` (resolved from `name`) with weights `pretrained`."""
    if pretrained.lower() in RANDOM_WEIGHTS:
        quick_gelu = is_coop_name(name)
        arch, force = _with_activation(arch, quick_gelu)
        return _fresh_model(arch, force)

    if pretrained.lower() in DEMO_VARIANTS:
        # Our own tags: weights pretrained on generated shapes (see demo_weights.py).
        if arch != TINY_MODEL_NAME:
            raise ValueError(f"MODEL.BACKBONE.PRETRAINED '{pretrained}' exists only for "
                             f"MODEL.BACKBONE.NAME '{TINY_MODEL_NAME}', not '{name}'.")
        return _load_demo_weights(name, arch, pretrained.lower())

    # A tag wins over a same-named file in the working directory, as in open_clip.
    if not _looks_like_path(pretrained):
        if pretrained.lower() == OPENAI_TAG:
            cached = openai_cache_file(name)
            if cached.is_file():
                return _load_from_file(name, arch, cached)
            return _load_from_tag(name, arch, OPENAI_TAG)
        if _tag_quick_gelu(arch, pretrained) is not None:
            return _load_from_tag(name, arch, pretrained)

    path = Path(os.path.expanduser(pretrained))
    if path.is_file():
        return _load_from_file(name, arch, path)
    if path.is_dir():
        raise FileNotFoundError(
            f"MODEL.BACKBONE.PRETRAINED '{pretrained}' is a folder; expected a checkpoint file, "
            f"or 'local-dir:{pretrained}' for a folder holding open_clip_config.json and weights."
        )
    if _looks_like_path(pretrained):
        raise FileNotFoundError(
            f"Checkpoint file '{pretrained}' (MODEL.BACKBONE.PRETRAINED) not found. Give an "
            f"existing {'/'.join(CHECKPOINT_SUFFIXES)} file, an open_clip tag such as 'openai', "
            "or '' for random weights."
        )
    return _load_from_tag(name, arch, pretrained)  # unknown tag: raises, listing the known ones


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------

def load_clip(name, pretrained, device="cpu"):
    """A frozen fp32 open_clip `CLIP` in eval mode: architecture `name`, weights `pretrained`.

    Args:
        name: CoOp's name (`ViT-B/16`, `RN50`, ...), an open_clip architecture, `gatescope-tiny`,
            or `local-dir:FOLDER` (the folder then also supplies the weights).
        pretrained: "" / "none" / "random", an open_clip tag, a checkpoint path, or
            `local-dir:FOLDER`; see the module docstring.
        device: where the returned model lives.

    Every parameter has requires_grad False; prompt learners own all learnable tensors.
    """
    name = str(name).strip()
    pretrained = str(pretrained if pretrained is not None else "").strip()

    if name.startswith(LOCAL_DIR_PREFIX):
        if pretrained.lower() not in RANDOM_WEIGHTS + (OPENAI_TAG, name.lower()):
            raise ValueError(
                f"MODEL.BACKBONE.NAME '{name}' already supplies the weights; "
                f"MODEL.BACKBONE.PRETRAINED '{pretrained}' would be ignored. Leave it at its "
                "default or clear it."
            )
        model = _load_from_local_dir("", name)
    elif pretrained.startswith(LOCAL_DIR_PREFIX):
        model = _load_from_local_dir(name, pretrained)
    else:
        arch = resolve_backbone_name(name)
        _check_plain_clip(arch, open_clip.get_model_config(arch))
        model = _load_named(name, arch, pretrained)

    if not isinstance(model, open_clip.model.CLIP):
        raise ValueError(f"'{name}' built a {type(model).__name__}, expected open_clip.model.CLIP.")
    model = model.float().to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------------------
# Checks made when the config is assembled (before anything is built)
# ---------------------------------------------------------------------------------------------

def backbone_name_problem(name):
    """What is wrong with MODEL.BACKBONE.NAME `name` (with the closest names), or None.

    CoOp's names, gatescope's configs and `local-dir:` folders are checked without importing
    open_clip, so a config check stays fast; any other name is looked up in open_clip.
    """
    name = str(name).strip()
    if not name:
        return (f"no backbone is named: set it (or --backbone) to one of CoOp's names "
                f"({', '.join(COOP_BACKBONE_NAMES)}), '{TINY_MODEL_NAME}', or an open_clip architecture")
    if name in COOP_BACKBONE_NAMES or (MODEL_CONFIG_DIR / f"{name}.json").is_file():
        return None
    if name.startswith(LOCAL_DIR_PREFIX):
        folder = name[len(LOCAL_DIR_PREFIX):]
        return None if os.path.isdir(os.path.expanduser(folder)) else f"the folder '{folder}' does not exist"
    try:
        resolve_backbone_name(name)
    except ValueError as e:
        return str(e)
    return None


def pretrained_problem(pretrained):
    """What is wrong with MODEL.BACKBONE.PRETRAINED, or None: a checkpoint path or `local-dir:`
    folder that does not exist (with the closest existing path). Tags are checked when the
    weights load (open_clip knows them)."""
    from gates.config_spec import closest_path

    from . import pretrained_from_cfg

    value = pretrained_from_cfg(pretrained).strip()
    if value.startswith(LOCAL_DIR_PREFIX):
        folder = value[len(LOCAL_DIR_PREFIX):]
        missing, kind, path = not os.path.isdir(os.path.expanduser(folder)), "folder", folder
    else:
        path = os.path.expanduser(value)
        missing, kind = _looks_like_path(value) and not os.path.isfile(path), "checkpoint file"
    if not missing:
        return None
    close = closest_path(path)
    hint = f'; did you mean "{close}"?' if close else ""
    return (f'the {kind} "{path}" does not exist{hint} (give a checkpoint file, an open_clip tag such as '
            "'openai', or '' for random weights)")
