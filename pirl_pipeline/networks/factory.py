"""Build any network pirl trains from a JSON-able description ``{"kind": ..., **kwargs}``.

Checkpoints store that description, so ``build_network(ckpt["network_kwargs"])`` rebuilds the model alone.
Kinds: ``pirl`` (PIRLNet), ``swinunetr`` (plain MONAI SwinUNETR, the baseline) and ``dynunet`` (MONAI
DynUNet configured like nnU-Net's plain 3D U-Net, the other baseline). :func:`canonical` is the one way to
compare two descriptions: a description saved before an argument existed (e.g. ``decoder_skips``) describes
the network that argument's default builds.
"""

from __future__ import annotations

import inspect
from typing import Any

from monai.networks.nets import DynUNet, SwinUNETR
from torch import nn

from pirl_pipeline.networks.pirl_net import PIRLNet

KINDS = ("pirl", "swinunetr", "dynunet")
_CLASSES: dict[str, type[nn.Module]] = {"pirl": PIRLNet, "swinunetr": SwinUNETR, "dynunet": DynUNet}


def dynunet_kwargs(in_channels: int, out_channels: int, feature_size: int) -> dict[str, Any]:
    """nnU-Net-like: 5 resolution levels, 3x3x3 convs, instance norm, filters doubling up to 320
    (32 at the top for feature_size 48, scaled down with smaller feature sizes for CPU runs)."""
    base = max(8, 32 * feature_size // 48)
    return {
        "spatial_dims": 3,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "kernel_size": [[3, 3, 3]] * 5,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * 4,
        "upsample_kernel_size": [[2, 2, 2]] * 4,
        "filters": [min(320, base * 2**i) for i in range(5)],
        "norm_name": "instance",
        "res_block": False,
    }


def create(
    kind: str, in_channels: int, out_channels: int, patch_size: list[int], feature_size: int, **options: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """A new network of ``kind`` and the description that rebuilds it. ``options``: PIRLNet's keyword arguments
    (pirl); ``window_size`` only (swinunetr); none (dynunet)."""
    if kind == "pirl":
        net = PIRLNet(in_channels, out_channels, patch_size, feature_size, **options)
        return net, {"kind": "pirl", **net.config}
    if kind == "swinunetr":
        description = {
            "kind": "swinunetr",
            "in_channels": in_channels,
            "out_channels": out_channels,
            "feature_size": feature_size,
            **{k: options.pop(k) for k in ("window_size",) if k in options},
        }
    elif kind == "dynunet":
        description = {"kind": "dynunet", **dynunet_kwargs(in_channels, out_channels, feature_size)}
    else:
        raise ValueError(f"unknown network kind {kind!r}; choose from {KINDS}")
    if options:
        raise ValueError(f"a {kind} network takes no option(s) {sorted(options)}")
    return build_network(description), description


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: what a description holds after a JSON or checkpoint round trip."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def canonical(description: Any) -> Any:
    """``description`` with every constructor argument it leaves out filled in with that argument's default
    (``{"kind": ..., **defaults of the kind's constructor, **description}``, tuples as lists), so a description
    written before an argument existed equals the one written after with that argument at its default. Use it
    on both sides of a comparison; anything that is not a known kind's description is returned unchanged."""
    if not isinstance(description, dict) or description.get("kind") not in KINDS:
        return description
    params = inspect.signature(_CLASSES[description["kind"]]).parameters.values()
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return _plain({"kind": description["kind"], **defaults, **description})


def build_network(description: dict[str, Any]) -> nn.Module:
    """The network ``{"kind": ..., **kwargs}`` describes; a description it cannot build is a ValueError."""
    if not isinstance(description, dict) or description.get("kind") not in KINDS:
        kind = description.get("kind") if isinstance(description, dict) else description
        raise ValueError(f"unknown network kind {kind!r}; choose from {KINDS}")
    kwargs = dict(description)
    kind = kwargs.pop("kind")
    try:
        return _CLASSES[kind](**kwargs)
    except TypeError as err:  # a missing or unknown argument
        raise ValueError(f"a {kind} network cannot be built from {sorted(kwargs)}: {err}") from None
