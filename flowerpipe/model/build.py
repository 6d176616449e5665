"""Build any torchvision classifier by name, with ImageNet, local or no weights, and a new head."""

from __future__ import annotations

import copy
import functools
import os
import pickle
import re
import urllib.error
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision.models as tvm
from torch import nn

from flowerpipe.core.atomic import atomic_path
from flowerpipe.core.errors import ConfigError, FlowerpipeError
from flowerpipe.core.files import file_digest


def build_model(
    arch: str,
    weights: str | None,
    num_classes: int,
    seed: int = 0,
    head: str = "linear",
    hidden: int = 512,
    dropout: float = 0.0,
) -> nn.Module:
    """`arch` with `weights` (a torchvision weights name, a state_dict file, or None), its
    classifier replaced by a fresh `num_classes`-way head (see `replace_head`) initialised from `seed`."""
    with torch.random.fork_rng(devices=[]):  # seeded init, global RNG left as it was
        torch.manual_seed(seed)
        if weights is None or _looks_like_path(weights):
            model = tvm.get_model(arch, weights=None)
            if weights is not None:
                _load_state_dict(model, weights, arch)
        else:
            model = _pretrained(arch, weights)
        _drop_aux_heads(model)
        return replace_head(model, num_classes, head, hidden, dropout)


def weights_identity(weights: str | None) -> str | None:
    """What `model.weights` starts a run from, for the run's fingerprint: a local file by the
    sha256 of its bytes (another file at the same path starts another run), else the name."""
    if weights is not None and _looks_like_path(weights) and Path(weights).expanduser().is_file():
        return f"sha256:{file_digest(Path(weights).expanduser())}"
    return weights


def _looks_like_path(weights: str) -> bool:
    return "/" in weights or os.sep in weights or weights.endswith((".pt", ".pth")) or Path(weights).exists()


def load_torch_file(
    path: str | os.PathLike[str], what: str, keys: tuple[str, ...] = (), shown: str | None = None
) -> Any:
    """What the torch file at `path` holds, read as tensors and plain containers only (weights_only:
    never code), and, when `keys` are given, a mapping that holds them all. Every way it can fail
    raises one FlowerpipeError line: the file (`shown`, default `path`), `what` it should have been,
    and why not."""
    shown = shown or str(path)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": a second line, no help
            warnings.simplefilter("ignore")
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL (\S+)", str(exc))
        never = f"it holds code to run ({named[1]}), which is never loaded" if named else None
        reason = never or f"not a file torch.save wrote: {_first_line(exc)}"
        raise FlowerpipeError(f"{shown}: not {what} ({reason})") from None
    except EOFError:
        raise FlowerpipeError(f"{shown}: not {what} (empty, or cut short)") from None
    except Exception as exc:  # torch raises many kinds for a bad file
        reason = f"not a file torch.save wrote: {type(exc).__name__}: {_first_line(exc)}"
        raise FlowerpipeError(f"{shown}: not {what} ({reason})") from None
    if keys and not isinstance(saved, dict):
        raise FlowerpipeError(f"{shown}: not {what} (it holds a {type(saved).__name__}, not a mapping)")
    missing = [k for k in keys if k not in saved]
    if missing:
        raise FlowerpipeError(f"{shown}: not {what} (a mapping without {', '.join(missing)})")
    return saved


_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _first_line(exc: BaseException) -> str:
    """The first sentence of what torch says went wrong, without its advice."""
    lines = [line.strip() for line in str(exc).splitlines()]
    said = [line for line in lines if line and not line.startswith(_TORCH_ADVICE)]
    return said[0].split(". ")[0].rstrip(".") if said else type(exc).__name__


def _load_state_dict(model: nn.Module, path: str, arch: str) -> None:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError("model.weights", f"{path}: no such file")
    try:
        state = load_torch_file(file, "a loadable state_dict", shown=path)
    except FlowerpipeError as exc:
        raise ConfigError("model.weights", str(exc)) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise ConfigError(
            "model.weights", f"{path}: does not fit {arch} as torchvision builds it ({first})"
        ) from None


def _pretrained(arch: str, name: str) -> nn.Module:
    enum = tvm.get_model_weights(arch)
    if name != "DEFAULT" and name not in enum.__members__:
        known = ", ".join(["DEFAULT", *enum.__members__])
        raise ConfigError(
            "model.weights", f"{arch} has no weights {name!r} (known: {known}; or a file path, or null)"
        )
    weights = enum.DEFAULT if name == "DEFAULT" else enum[name]
    try:
        return tvm.get_model(arch, weights=weights)
    except (urllib.error.URLError, OSError) as exc:
        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise ConfigError(
            "model.weights",
            f"cannot download {arch} {weights} from {weights.url} ({getattr(exc, 'reason', exc)}). "
            f"Offline: put that file at {target} (TORCH_HOME moves it), or set model.weights "
            "to a local state_dict path, or to null to train from random weights",
        ) from None


def _drop_aux_heads(model: nn.Module) -> None:
    """GoogLeNet and Inception-v3 train auxiliary classifiers that make forward() return a tuple;
    drop them after loading weights, as torchvision does for aux_logits=False."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for name in ("aux1", "aux2", "AuxLogits"):
            if hasattr(model, name):
                setattr(model, name, None)


class Head(nn.Sequential):
    """A classifier head made here: [Dropout,] Linear, or Linear-ReLU-Dropout-Linear (`mlp`).
    1x1 convolutions take the place of Linear where the model classifies with one (SqueezeNet)."""


def replace_head(
    model: nn.Module, num_classes: int, head: str = "linear", hidden: int = 512, dropout: float = 0.0
) -> nn.Module:
    """Replace the last classification layer (ResNet `fc`, VGG `classifier[-1]`, ViT `heads.head`,
    SqueezeNet's final conv, ...) with a fresh `num_classes`-way head. A plain linear head stays a
    single layer, so the state_dict keeps torchvision's keys."""
    name, layer = _last_classifier(model)
    dense: Callable[[int, int], nn.Module]
    if isinstance(layer, nn.Linear):
        width, dense = layer.in_features, nn.Linear
    else:
        width, dense = layer.in_channels, functools.partial(nn.Conv2d, kernel_size=1)
    if head == "mlp":
        new: nn.Module = Head(
            dense(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), dense(hidden, num_classes)
        )
    elif dropout > 0:
        new = Head(nn.Dropout(dropout), dense(width, num_classes))
    else:
        new = dense(width, num_classes)
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return model


def _last_classifier(model: nn.Module) -> tuple[str, nn.Linear | nn.Conv2d]:
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    for name, layer in reversed(layers):
        if isinstance(layer, nn.Linear) or layer.kernel_size == (1, 1):
            return name, layer
    raise ValueError(f"{type(model).__name__}: no classifier layer found")


def head_name(model: nn.Module) -> str:
    """The qualified name of the classifier head (`fc`, `classifier.6`, `heads.head`, ...)."""
    name, _ = _last_classifier(model)
    parent = name.rpartition(".")[0]
    return parent if parent and isinstance(model.get_submodule(parent), Head) else name


def headless(model: nn.Module) -> nn.Module:
    """A copy of `model` whose classifier head is taken out: its outputs are the head's inputs."""
    body = copy.deepcopy(model)
    body.set_submodule(head_name(model), nn.Identity())
    return body


def freeze(model: nn.Module, spec: str | list[str]) -> list[str]:
    """Stop gradients in the modules `spec` names: `none`, `backbone` (all but the head), or a list
    of module names (`[layer1, layer2]`). Returns the frozen modules' names, for `train_mode`."""
    if spec == "none":
        return []
    if spec == "backbone":
        learn_backbone(model, False)
        return backbone_modules(model)
    known = dict(model.named_modules())
    for name in spec:
        if not name or name not in known:
            top = ", ".join(n for n, _ in model.named_children())
            raise ConfigError(
                "train.freeze", f"{type(model).__name__} has no module {name!r} (top level: {top})"
            )
        model.get_submodule(name).requires_grad_(False)
    return list(spec)


def backbone_modules(model: nn.Module) -> list[str]:
    """The largest modules that are not, and do not hold, the classifier head."""
    return _complement(model, head_name(model))


def learn_backbone(model: nn.Module, on: bool) -> None:
    """Let every parameter outside the head learn, or stop it: those of `backbone_modules` and the
    model's own (ViT's class token belongs to no module)."""
    for name in backbone_modules(model):
        model.get_submodule(name).requires_grad_(on)
    for parameter in model.parameters(recurse=False):
        parameter.requires_grad_(on)


def num_outputs(model: nn.Module) -> int:
    """The number of classes the model's head scores."""
    _, layer = _last_classifier(model)
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def train_mode(model: nn.Module, frozen: list[str]) -> nn.Module:
    """`model.train()`, except that frozen modules stay in eval mode: their BatchNorm statistics
    do not drift and their dropout stays off."""
    model.train()
    for name in frozen:
        model.get_submodule(name).eval()
    return model


def _complement(model: nn.Module, keep: str, prefix: str = "") -> list[str]:
    """The largest modules that neither are nor contain the module named `keep`."""
    names = []
    for child, module in model.named_children():
        full = f"{prefix}{child}"
        if full == keep:
            continue
        if keep.startswith(f"{full}."):
            names += _complement(module, keep, f"{full}.")
        else:
            names.append(full)
    return names


def save_trained(model: nn.Module, path: str | os.PathLike[str], **meta: Any) -> None:
    """Save a trained model's state_dict with what is needed to rebuild it (arch, classes...)."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), **meta}, tmp)


def load_trained(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by `save_trained`; returns it in eval mode with its metadata."""
    saved = load_torch_file(path, "a model flowerpipe trained", ("state_dict", "arch", "classes"))
    state = saved.pop("state_dict")
    head = {k: saved[k] for k in ("head", "hidden", "dropout") if k in saved}
    model = build_model(saved["arch"], None, len(saved["classes"]), **head)
    model.load_state_dict(state)
    return model.eval(), saved
