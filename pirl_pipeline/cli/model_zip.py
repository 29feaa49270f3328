"""``pirl_export_model`` / ``pirl_install_model``: a trained model as one zip (nnU-Net's export/install pair), and
``pirl_export_model --swinunetr``: its weights as a state dict that a plain MONAI ``SwinUNETR`` loads with
``strict=True``, without pirl.

The zip holds ``DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION/`` (``registry.model_folder``): dataset.json and the
plans, and per fold the chosen checkpoints, config.json, training_log.txt, progress.png, validation/summary.json and
postprocessing.json (what pirl_predict applies);
no images and no predictions. Install puts it under $PIRL_results. A zip comes from strangers, so install refuses
entries outside that one folder (absolute paths, ``..``, backslashes, links, anything but files and folders),
refuses to replace an installed model without ``--overwrite``, and loads every checkpoint with
``weights_only=True`` before anything appears under the final name. Before writing, the entries' declared sizes
must fit ``MAX_INSTALL_BYTES`` and the free space, and each must compress at most ``MAX_RATIO`` to 1 (a zip bomb
is refused unread); extraction counts the bytes and stops at the declared size. A damaged entry (CRC) or a full
disk is one error line; the staging folder is removed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from monai.networks.nets import SwinUNETR

from pirl_pipeline.checkpoint import check_same_model, load_checkpoint, load_network, torch_save
from pirl_pipeline.cli.common import cli_entry
from pirl_pipeline.errors import PirlInputError, PirlWriteError
from pirl_pipeline.file_io import atomic_path, make_dirs, os_reason, remove_stale, save_json, temp_entries, temp_name
from pirl_pipeline.fold_folder import FINAL, PREFIX, FoldFolder
from pirl_pipeline.paths import model_folder, results_root
from plans.plans_manager import PLANS_FILE, Plans

log = logging.getLogger("pirl")
EXECUTION_ONLY = ("use_checkpoint", "use_flash_attention")  # SwinUNETR options that leave the weights alone
#: what an installed model may unpack to: 5 folds x final + best checkpoint of the largest pirl network (fs 48,
#: 128^3 patch: ~1.7 GB with its optimiser state) is ~17 GB
MAX_INSTALL_BYTES = 32 << 30
#: an entry may expand at most this much: checkpoints are stored (1:1), logs and JSON deflate 3-20:1, zeros ~1000:1
MAX_RATIO = 100
MAX_ENTRIES = 10_000
CHUNK = 1 << 20


def _relative_model_folder(state: dict) -> PurePosixPath:
    plans = Plans.from_dict(state["plans"])
    folder = model_folder(plans.dataset_name, state["trainer_name"], plans.plans_name, state["configuration"], Path())
    return PurePosixPath(folder.as_posix())


def _fold_checkpoints(folder: Path, folds: list[str] | None, checkpoints: list[str]) -> dict[str, list[Path]]:
    """fold -> its checkpoint files (all must exist); default folds: every fold with the first checkpoint."""
    if not folder.is_dir():
        raise PirlInputError(f"{folder}: model folder not found")
    folds = folds or [f.fold for f in FoldFolder.folds(folder, require=checkpoints[0])]
    if not folds:
        raise PirlInputError(f"{folder}: no {PREFIX}*/{checkpoints[0]} to export")
    found = {f: [FoldFolder(folder, f).checkpoint(c) for c in checkpoints] for f in folds}
    for path in (p for paths in found.values() for p in paths):
        if not path.is_file():
            raise PirlInputError(f"{path}: checkpoint not found")
    return found


def export_model(folder: str | Path, output: str | Path, folds: list[str] | None = None,
                 checkpoints: tuple[str, ...] = (FINAL,)) -> PurePosixPath:
    """Write the model folder's ``folds`` (default: all with the first checkpoint) into the zip ``output``.
    Returns the model folder's path inside the zip."""
    folder, output = Path(folder), Path(output)
    found = _fold_checkpoints(folder, folds, list(checkpoints))
    first_path = next(iter(found.values()))[0]
    first = load_checkpoint(first_path)
    prefix = _relative_model_folder(first)
    with atomic_path(output) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(str(prefix / "dataset.json"), json.dumps(first["dataset_json"], indent=2))
        zf.writestr(str(prefix / PLANS_FILE), json.dumps(first["plans"], indent=2))
        for fold, paths in found.items():
            here = FoldFolder(folder, fold)
            inside = prefix / here.name
            for path in paths:
                check_same_model(path, load_checkpoint(path), first_path, first)  # one model per zip
                zf.write(path, str(inside / path.name), compress_type=zipfile.ZIP_STORED)
            for path in here.records():
                if path.is_file():
                    zf.write(path, str(inside / path.relative_to(here.path).as_posix()))
    log.info("exported %s (folds %s) to %s", prefix, ", ".join(found), output)
    return prefix


def export_swinunetr(folder: str | Path, output: str | Path, fold: str | None = None,
                     checkpoint: str = FINAL) -> dict:
    """Write the SwinUNETR weights of one fold to ``output`` (a plain {key: tensor} state dict) and
    ``output.json`` (the ``monai.networks.nets.SwinUNETR`` keyword arguments, channels, labels, patch size).
    Checked here with ``strict=True``. Returns the keyword arguments."""
    found = _fold_checkpoints(Path(folder), [fold] if fold else None, [checkpoint])
    if len(found) > 1:
        raise PirlInputError(f"{folder}: folds {', '.join(found)}; pick one with -f")
    path = next(iter(found.values()))[0]
    state = load_checkpoint(path)
    net = load_network(state, path)
    description = dict(state["network_kwargs"])
    kind = description.pop("kind")
    if kind == "pirl":
        kwargs, weights = net.swinunetr_kwargs(), net.to_swinunetr_state_dict()
    elif kind == "swinunetr":
        kwargs, weights = description, state["network_weights"]
    else:
        raise PirlInputError(f"{path}: a {kind} network has no SwinUNETR weights")
    kwargs = {k: v for k, v in kwargs.items() if k not in EXECUTION_ONLY}
    weights = {k: v.detach().clone().contiguous() for k, v in weights.items()}
    SwinUNETR(**kwargs).load_state_dict(weights, strict=True)
    output = Path(output)
    torch_save(weights, output)
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


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def _check_sizes(zip_path: Path, infos: list[zipfile.ZipInfo], root: Path) -> None:
    """Before anything is written: at most MAX_ENTRIES entries, none expanding more than MAX_RATIO to 1, all
    together at most MAX_INSTALL_BYTES and the free space under ``root`` (sizes as the zip declares them)."""
    if len(infos) > MAX_ENTRIES:
        raise PirlInputError(f"{zip_path}: {len(infos)} entries (a model has at most {MAX_ENTRIES}); nothing was "
                             "installed")
    for info in infos:
        if info.file_size > MAX_RATIO * max(info.compress_size, 1 << 10):
            raise PirlInputError(f"{zip_path}: entry {info.filename!r} expands {_size(info.compress_size)} to "
                                 f"{_size(info.file_size)} (more than {MAX_RATIO}:1, a zip bomb?); nothing was "
                                 "installed")
    total = sum(info.file_size for info in infos)
    if total > MAX_INSTALL_BYTES:
        raise PirlInputError(f"{zip_path}: unpacks to {_size(total)}, more than any pirl model (at most "
                             f"{_size(MAX_INSTALL_BYTES)}); nothing was installed")
    free = shutil.disk_usage(next(p for p in (root, *root.parents) if p.exists())).free
    if total > free:
        raise PirlWriteError(f"{root}: write failed: no space left on device ({zip_path} unpacks to {_size(total)}, "
                             f"{_size(free)} free); nothing was installed")


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> None:
    """Copy one entry in chunks, stopping at its declared size (zipfile's CRC check fails on anything else)."""
    written = 0
    with archive.open(info) as src, open(dest, "xb") as dst:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise zipfile.BadZipFile(f"more than the declared {info.file_size} bytes")
            dst.write(chunk)


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
        _check_sizes(zip_path, archive.infolist(), root)
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
        _clear_interrupted_install(target)
        if target.exists() and not overwrite:
            raise PirlInputError(f"{target}: a model is installed there already (--overwrite replaces it)")
        new_dataset = not target.parent.exists()
        staging = make_dirs(target.parent) / temp_name("install")
        old: Path | None = None  # the model being replaced, hidden until the new one is in place
        try:
            for info, rel in members:
                dest = staging.joinpath(*rel.parts[2:])
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    _extract(archive, info, dest)
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
                    raise PirlInputError(f"{zip_path}: entry {info.filename!r} is damaged or unreadable ({err}); "
                                         "nothing was installed") from None
            _check_checkpoints(zip_path, staging, PurePosixPath(dataset, model))
            if target.exists():
                old = target.with_name(temp_name(f"replaced-{target.name}"))
                target.rename(old)
            staging.rename(target)
        except OSError as err:  # a full disk, no permission
            raise PirlWriteError(f"{target}: write failed: {os_reason(err)}; nothing was installed") from None
        finally:
            if old is not None and old.exists() and not target.exists():  # the new one failed: the old one back
                with contextlib.suppress(OSError):  # else the next install puts it back
                    old.rename(target)
            if staging.exists():
                shutil.rmtree(staging)
            if new_dataset and not target.exists():
                with contextlib.suppress(OSError):  # created above, nothing installed in it
                    target.parent.rmdir()
    if old is not None:  # installed; a replaced model that cannot be removed now goes with the next install
        shutil.rmtree(old, ignore_errors=True)
    folds = [f.name for f in FoldFolder.folds(target) if f.checkpoints()]
    log.info("installed %s/%s (%s) into %s", dataset, model, ", ".join(folds), target)
    return target


def _clear_interrupted_install(target: Path) -> None:
    """What an install into ``target``'s dataset folder that was killed left there: its staging folders are
    removed; a model it had hidden to replace (``.tmp-XXXXXXXX-replaced-MODEL``) is put back when ``target`` is
    missing (the kill came between the two renames), else removed."""
    hidden = temp_entries(target.parent, f"replaced-{target.name}")
    if hidden and not target.exists():
        newest = max(hidden, key=lambda p: p.stat().st_mtime)
        newest.rename(target)
        log.warning("%s: put back the model an interrupted install had moved aside (%s)", target, newest.name)
    remove_stale(target.parent, f"replaced-{target.name}")
    remove_stale(target.parent, "install")


def _check_checkpoints(zip_path: Path, staging: Path, model: PurePosixPath) -> None:
    """Every extracted checkpoint loads with ``weights_only=True`` and is a fold of the zip's one model; errors name
    the entry inside the zip."""
    checkpoints = [path for fold in FoldFolder.folds(staging) for path in fold.checkpoints()]
    if not checkpoints:
        raise PirlInputError(f"{zip_path}: no {PREFIX}*/*.pth checkpoint in {model}")
    first = None
    for path in checkpoints:
        shown = zip_path / model / path.relative_to(staging)
        try:
            state = load_checkpoint(path)
        except PirlInputError as err:
            raise PirlInputError(str(err).replace(str(path), str(shown))) from None
        if _relative_model_folder(state) != model:
            raise PirlInputError(f"{zip_path}: {path.relative_to(staging)} is a checkpoint of "
                                 f"{_relative_model_folder(state)}, not of {model}")
        first = first or (shown, state)
        check_same_model(shown, state, *first)


@cli_entry
def export_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pirl_export_model", description="Export a trained model folder as a zip "
                                "(checkpoints, plans, dataset.json, logs; no training data), or with --swinunetr "
                                "one fold's weights as a plain MONAI SwinUNETR state dict.")
    p.add_argument("-m", dest="model_folder", type=Path, required=True, help="TRAINER__PLANS__CONFIG folder")
    p.add_argument("-o", dest="output", type=Path, required=True, help="model.zip (or weights.pth with --swinunetr)")
    p.add_argument("-f", dest="folds", nargs="+", default=None, help="folds (default: all with the checkpoint)")
    p.add_argument("-chk", dest="checkpoints", nargs="+", default=[FINAL])
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
