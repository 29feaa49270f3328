"""``pirl_export_model`` / ``pirl_install_model``: a trained model as one zip (nnU-Net's export/install pair), and
``pirl_export_model --swinunetr``: its weights as a state dict that a plain MONAI ``SwinUNETR`` loads with
``strict=True``, without pirl.

The zip holds ``DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION/`` (``registry.model_folder``): dataset.json and the
plans, and per fold the chosen checkpoints, config.json, training_log.txt, progress.png, validation/summary.json and
postprocessing.json (what pirl_predict applies);
no images and no predictions. Install puts it under $PIRL_results. A zip comes from strangers, so install refuses
entries outside that one folder (absolute paths, ``..``, backslashes, links, anything but files and folders),
refuses to replace an installed model without ``--overwrite``, and loads every checkpoint with
``weights_only=True`` before anything appears under the final name.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import stat
import uuid
import zipfile
from pathlib import Path, PurePosixPath

import torch
from monai.networks.nets import SwinUNETR

from pirl_pipeline.checkpoint import load_checkpoint
from pirl_pipeline.cli.common import cli_entry
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import atomic_path, save_json
from pirl_pipeline.networks.factory import build_network
from pirl_pipeline.paths import model_folder, results_root
from plans.plans_manager import PLANS_FILE, Plans

log = logging.getLogger("pirl")
FOLD_FILES = ("config.json", "training_log.txt", "progress.png", "validation/summary.json", "postprocessing.json")
EXECUTION_ONLY = ("use_checkpoint", "use_flash_attention")  # SwinUNETR options that leave the weights alone


def _relative_model_folder(state: dict) -> PurePosixPath:
    plans = Plans.from_dict(state["plans"])
    folder = model_folder(plans.dataset_name, state["trainer_name"], plans.plans_name, state["configuration"], Path())
    return PurePosixPath(folder.as_posix())


def _fold_checkpoints(folder: Path, folds: list[str] | None, checkpoints: list[str]) -> dict[str, list[Path]]:
    """fold -> its checkpoint files (all must exist); default folds: every fold with the first checkpoint."""
    if not folder.is_dir():
        raise PirlInputError(f"{folder}: model folder not found")
    folds = folds or sorted(p.name.removeprefix("fold_") for p in folder.glob("fold_*") if (p / checkpoints[0]).is_file())
    if not folds:
        raise PirlInputError(f"{folder}: no fold_*/{checkpoints[0]} to export")
    found = {f: [folder / f"fold_{f}" / c for c in checkpoints] for f in folds}
    for path in (p for paths in found.values() for p in paths):
        if not path.is_file():
            raise PirlInputError(f"{path}: checkpoint not found")
    return found


def export_model(folder: str | Path, output: str | Path, folds: list[str] | None = None,
                 checkpoints: tuple[str, ...] = ("checkpoint_final.pth",)) -> PurePosixPath:
    """Write the model folder's ``folds`` (default: all with the first checkpoint) into the zip ``output``.
    Returns the model folder's path inside the zip."""
    folder, output = Path(folder), Path(output)
    found = _fold_checkpoints(folder, folds, list(checkpoints))
    first = load_checkpoint(next(iter(found.values()))[0])
    prefix = _relative_model_folder(first)
    with atomic_path(output) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(str(prefix / "dataset.json"), json.dumps(first["dataset_json"], indent=2))
        zf.writestr(str(prefix / PLANS_FILE), json.dumps(first["plans"], indent=2))
        for fold, paths in found.items():
            for path in paths:
                if _relative_model_folder(load_checkpoint(path)) != prefix:
                    raise PirlInputError(f"{path}: another model than {prefix} (one model per zip)")
                zf.write(path, str(prefix / f"fold_{fold}" / path.name), compress_type=zipfile.ZIP_STORED)
            for name in FOLD_FILES:
                if (folder / f"fold_{fold}" / name).is_file():
                    zf.write(folder / f"fold_{fold}" / name, str(prefix / f"fold_{fold}" / name))
    log.info("exported %s (folds %s) to %s", prefix, ", ".join(found), output)
    return prefix


def export_swinunetr(folder: str | Path, output: str | Path, fold: str | None = None,
                     checkpoint: str = "checkpoint_final.pth") -> dict:
    """Write the SwinUNETR weights of one fold to ``output`` (a plain {key: tensor} state dict) and
    ``output.json`` (the ``monai.networks.nets.SwinUNETR`` keyword arguments, channels, labels, patch size).
    Checked here with ``strict=True``. Returns the keyword arguments."""
    found = _fold_checkpoints(Path(folder), [fold] if fold else None, [checkpoint])
    if len(found) > 1:
        raise PirlInputError(f"{folder}: folds {', '.join(found)}; pick one with -f")
    path = next(iter(found.values()))[0]
    state = load_checkpoint(path)
    description = dict(state["network_kwargs"])
    kind = description.pop("kind")
    if kind == "pirl":
        net = build_network(state["network_kwargs"])
        net.load_state_dict(state["network_weights"])
        kwargs, weights = net.swinunetr_kwargs(), net.to_swinunetr_state_dict()
    elif kind == "swinunetr":
        kwargs, weights = description, state["network_weights"]
    else:
        raise PirlInputError(f"{path}: a {kind} network has no SwinUNETR weights")
    kwargs = {k: v for k, v in kwargs.items() if k not in EXECUTION_ONLY}
    weights = {k: v.detach().clone().contiguous() for k, v in weights.items()}
    SwinUNETR(**kwargs).load_state_dict(weights, strict=True)
    output = Path(output)
    with atomic_path(output) as tmp:
        torch.save(weights, tmp)
    save_json({"class": "monai.networks.nets.SwinUNETR", "kwargs": kwargs, "task": state["config"].get("task"),
               "channel_names": state["dataset_json"]["channel_names"], "labels": state["dataset_json"]["labels"],
               "patch_size": state["config"].get("patch_size") or description.get("patch_size"),
               "source": str(path)}, output.with_name(output.name + ".json"))
    log.info("SwinUNETR weights of %s written to %s (+ .json with the SwinUNETR arguments)", path, output)
    return kwargs


def _member(zip_path: Path, info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The entry's relative path (None for a folder), or a PirlInputError when it could land elsewhere."""
    name, mode = info.filename, info.external_attr >> 16

    def refuse(reason: str) -> PirlInputError:
        return PirlInputError(f"{zip_path}: refusing entry {name!r} ({reason}); nothing was installed")

    if "\\" in name or name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise refuse("absolute path or backslash")
    parts = name.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise refuse("'..', '.' or an empty path component")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no Unix type recorded (plain file)
        raise refuse("a link or special file")
    return None if info.is_dir() else PurePosixPath(*parts)


def install_model(zip_path: str | Path, overwrite: bool = False, root: Path | None = None) -> Path:
    """Install a model zip under ``root`` ($PIRL_results); returns the installed model folder."""
    zip_path, root = Path(zip_path), results_root() if root is None else Path(root)
    if not zip_path.is_file():
        raise PirlInputError(f"{zip_path}: file not found")
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as err:
        raise PirlInputError(f"{zip_path}: not a zip file ({err})") from None
    with archive:
        members = [(info, rel) for info in archive.infolist() if (rel := _member(zip_path, info)) is not None]
        names = [str(rel) for _, rel in members]
        if len(set(names)) != len(names):
            raise PirlInputError(f"{zip_path}: an entry appears twice; nothing was installed")
        tops = {rel.parts[:2] for _, rel in members}
        if len(tops) != 1 or any(len(rel.parts) < 3 for _, rel in members):
            raise PirlInputError(f"{zip_path}: entries must all lie in one DatasetXXX_Name/TRAINER__PLANS__CONFIG/ "
                                 f"folder; found {sorted('/'.join(t) for t in tops)[:4]}")
        dataset, model = next(iter(tops))
        if not re.fullmatch(r"Dataset\d{3}_.+", dataset):
            raise PirlInputError(f"{zip_path}: {dataset!r} is not a dataset folder name (DatasetXXX_Name)")
        target = root / dataset / model
        if target.exists() and not overwrite:
            raise PirlInputError(f"{target}: a model is installed there already (--overwrite replaces it)")
        staging = root / dataset / f".tmp-install-{uuid.uuid4().hex[:8]}"
        try:
            for info, rel in members:
                dest = staging.joinpath(*rel.parts[2:])
                dest.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(dest, "xb") as dst:
                    shutil.copyfileobj(src, dst)
            checkpoints = sorted(staging.glob("fold_*/*.pth"))
            if not checkpoints:
                raise PirlInputError(f"{zip_path}: no fold_*/*.pth checkpoint in {dataset}/{model}")
            for path in checkpoints:  # weights_only=True: a checkpoint that needs more than tensors is refused
                state = load_checkpoint(path)
                if _relative_model_folder(state) != PurePosixPath(dataset, model):
                    raise PirlInputError(f"{zip_path}: {path.relative_to(staging)} is a checkpoint of "
                                         f"{_relative_model_folder(state)}, not of {dataset}/{model}")
            if target.exists():
                old = target.with_name(f".tmp-replaced-{uuid.uuid4().hex[:8]}")
                target.rename(old)
                staging.rename(target)
                shutil.rmtree(old)
            else:
                staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    folds = sorted({p.parent.name for p in target.glob("fold_*/*.pth")})
    log.info("installed %s/%s (%s) into %s", dataset, model, ", ".join(folds), target)
    return target


@cli_entry
def export_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pirl_export_model", description="Export a trained model folder as a zip "
                                "(checkpoints, plans, dataset.json, logs; no training data), or with --swinunetr "
                                "one fold's weights as a plain MONAI SwinUNETR state dict.")
    p.add_argument("-m", dest="model_folder", type=Path, required=True, help="TRAINER__PLANS__CONFIG folder")
    p.add_argument("-o", dest="output", type=Path, required=True, help="model.zip (or weights.pth with --swinunetr)")
    p.add_argument("-f", dest="folds", nargs="+", default=None, help="folds (default: all with the checkpoint)")
    p.add_argument("-chk", dest="checkpoints", nargs="+", default=["checkpoint_final.pth"])
    p.add_argument("--swinunetr", action="store_true", help="write SwinUNETR weights (strict=True) + OUTPUT.json")
    args = p.parse_args(argv)
    if args.swinunetr:
        if len(args.checkpoints) > 1 or (args.folds and len(args.folds) > 1):
            raise PirlInputError("--swinunetr exports one fold and one checkpoint")
        export_swinunetr(args.model_folder, args.output, args.folds[0] if args.folds else None, args.checkpoints[0])
    else:
        export_model(args.model_folder, args.output, args.folds, tuple(args.checkpoints))
    return 0


@cli_entry
def install_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pirl_install_model", description="Install a model zip from pirl_export_model "
                                "into $PIRL_results/DatasetXXX_Name/TRAINER__PLANS__CONFIG.")
    p.add_argument("zip", type=Path)
    p.add_argument("--overwrite", action="store_true", help="replace a model installed at the same place")
    args = p.parse_args(argv)
    print(install_model(args.zip, args.overwrite))
    return 0
