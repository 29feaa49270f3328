"""The case ``overview.png`` shows: which case, its files, its volumes on one grid and its scores.

:func:`load_case` reads the inputs, the reference label, each predicted segmentation and each synthesised
modality of one case (volumes on another grid are left out with a note); ``report/overview.py`` draws them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pirl_pipeline.data.dataset_json import list_label_files, parse_channel_file_name, whole_target
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.image_similarity import percentile_scale
from pirl_pipeline.report.collect import PredictionFolder, format_value


@dataclass
class Volume:
    array: np.ndarray  # (z, y, x) in LPS order
    spacing: tuple[float, float, float]  # (z, y, x)


def read_volume(path: Path) -> Volume:
    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 3:
        raise ValueError(f"{image.GetDimension()}D image")
    image = sitk.DICOMOrient(image, "LPS")
    return Volume(sitk.GetArrayFromImage(image).astype(np.float32), tuple(reversed(image.GetSpacing())))


def channel_files(folder: Path | None, file_ending: str) -> dict[str, dict[int, Path]]:
    """``{case: {channel: path}}`` of ``CASE_XXXX<ending>`` files (other files ignored; {} without a folder)."""
    cases: dict[str, dict[int, Path]] = {}
    if folder is not None and folder.is_dir():
        for f in sorted(folder.iterdir()):
            parsed = parse_channel_file_name(f.name, file_ending) if f.is_file() else None
            if parsed is not None:
                cases.setdefault(parsed[0], {})[parsed[1]] = f
    return cases


def choose_case(requested: str | None, images: dict, labels: dict, segs: list[dict], translations: list[dict]
                ) -> str | None:
    """The requested case, else the (first) case that the most prediction folders and a label cover."""
    everything = set(images) | set(labels) | {c for d in segs + translations for c in d}
    if requested is not None:
        if requested not in everything:
            raise PirlInputError(f"case {requested}: not found in the images, labels or prediction folders "
                                 f"(known: {', '.join(sorted(everything)[:8]) or 'none'})")
        return requested
    if not everything:
        return None

    def score(case: str) -> tuple[int, int, int, str]:
        covered = sum(case in d for d in segs + translations)
        return (-covered, -(case in images), -(case in labels), case)

    return min(everything, key=score)


def as_scored(volume: Volume, brain: np.ndarray) -> Volume:
    """``volume`` as the translation scores see it: scaled by its own 0.5-99.5 percentiles inside ``brain`` to
    [0, 1] (``percentile_scale``), 0 outside; a synthesis in z-score units and its reference in scanner units
    then share one grey scale."""
    return Volume(np.where(brain, percentile_scale(volume.array, brain), 0.0), volume.spacing)


def _case_metrics(pred: PredictionFolder | None, case: str) -> dict:
    """``{target: {metric: value}}`` of one case from a pirl_evaluate summary (empty when not evaluated)."""
    if pred is None or not pred.summary:
        return {}
    return next((e.get("metrics") or {} for e in pred.summary.get("per_case", []) if e.get("case") == case), {})


def seg_score(pred: PredictionFolder | None, case: str) -> str:
    """"Dice whole tumor 0.812" (the whole-lesion target, ``dataset_json.whole_target``, else the mean over
    labels) or ""."""
    metrics = _case_metrics(pred, case)
    values = {t: m.get("Dice") for t, m in metrics.items() if isinstance(m.get("Dice"), (int, float))}
    if not values:
        return ""
    target = whole_target(values)
    if target is None:
        return f"mean Dice {format_value(float(np.mean(list(values.values()))))}"
    return f"Dice {target} {format_value(values[target])}"


def translate_score(pred: PredictionFolder, case: str, target: str) -> str:
    """"PSNR 21.3 dB, SSIM 0.712" or ""."""
    m = _case_metrics(pred, case).get(target) or {}
    psnr = m.get("PSNR")
    parts = [f"PSNR {f'{psnr:.1f}' if isinstance(psnr, (int, float)) else format_value(psnr)} dB"
             if psnr is not None else "",
             f"SSIM {format_value(m['SSIM'])}" if m.get("SSIM") is not None else ""]
    return ", ".join(p for p in parts if p)


def channel_name(channel_names: list[str], channel: int) -> str:
    """The modality name of ``channel``, else "channel 0004"."""
    return channel_names[channel] if channel < len(channel_names) else f"channel {channel:04d}"


@dataclass
class CaseFiles:
    """Every case's files: ``images``/``translations`` ``{case: {channel: path}}``, ``labels``/``segs``
    ``{case: path}``; one dict in ``segs``/``translations`` per prediction folder."""
    images: dict[str, dict[int, Path]]
    labels: dict[str, Path]
    segs: list[dict[str, Path]]
    translations: list[dict[str, dict[int, Path]]]


def find_case_files(file_ending: str, images_dir: Path | None, labels_dir: Path | None,
                    seg_preds: list[PredictionFolder], translate_preds: list[PredictionFolder]) -> CaseFiles:
    return CaseFiles(channel_files(images_dir, file_ending) if images_dir else {},
                     list_label_files(labels_dir, file_ending),
                     [list_label_files(p.folder, file_ending) for p in seg_preds],
                     [channel_files(p.folder, file_ending) for p in translate_preds])


@dataclass
class Synthesis:
    """Modality ``channel`` of the case as ``pred`` synthesised it from ``source`` (None: the folder names
    no single input)."""
    pred: PredictionFolder
    channel: int
    volume: Volume
    source: int | None


@dataclass
class Overlay:
    """A label volume drawn over the background image; ``pred`` is None for the reference label."""
    title: str
    volume: Volume
    pred: PredictionFolder | None


@dataclass
class LoadedCase:
    """What the overview shows of one case; every volume but the inputs is on the same (z, y, x) grid."""
    case: str
    channel_names: list[str]
    inputs: dict[int, Volume]
    reference: Volume | None
    segmentations: list[tuple[PredictionFolder, Volume]]
    syntheses: list[Synthesis]

    def name(self, channel: int) -> str:
        return channel_name(self.channel_names, channel)

    def images(self) -> list[Volume]:
        """The inputs, then the syntheses."""
        return list(self.inputs.values()) + [s.volume for s in self.syntheses]

    def slice_label(self) -> np.ndarray | None:
        """The label that places the slices: the reference, else the first predicted segmentation."""
        if self.reference is not None:
            return self.reference.array
        return self.segmentations[0][1].array if self.segmentations else None

    def overlays(self) -> list[Overlay]:
        """The reference label (when read), then each predicted segmentation."""
        reference = [Overlay("reference label", self.reference, None)] if self.reference is not None else []
        return reference + [Overlay(f"predicted ({pred.label})", v, pred) for pred, v in self.segmentations]


class CaseLoader:
    """Reads the volumes of one case; an unreadable file or a volume off the grid is a note, not an error."""

    def __init__(self, notes: list[str]) -> None:
        self.notes = notes
        self.grid: tuple[int, ...] | None = None  # (z, y, x): the first input's, else the first volume checked

    def read(self, path: Path, what: str) -> Volume | None:
        try:
            return read_volume(path)
        except (RuntimeError, ValueError) as err:
            self.notes.append(f"overview: {what} `{path}` is unreadable ({str(err).splitlines()[0][:80]}); skipped")
            return None

    def on_grid(self, volume: Volume | None, what: str) -> Volume | None:
        """``volume`` when its shape is the grid's (the first volume sets the grid), else None."""
        if volume is None:
            return None
        if self.grid is None:
            self.grid = volume.array.shape
        if volume.array.shape != self.grid:
            self.notes.append(f"overview: {what} has shape {volume.array.shape}, not the input's {self.grid}; skipped")
            return None
        return volume


def load_inputs(loader: CaseLoader, files: dict[int, Path], case: str, images_dir: Path | None
                ) -> dict[int, Volume]:
    """``{channel: volume}`` of the readable input images; the first one sets the loader's grid."""
    inputs = {c: v for c, p in sorted(files.items()) if (v := loader.read(p, "image")) is not None}
    if not inputs:
        where = f"`{images_dir}`" if images_dir else "(no images folder)"
        loader.notes.append(f"overview: no input images of case {case} in {where}: input and reference panels "
                            "skipped")
    loader.grid = next(iter(inputs.values())).array.shape if inputs else None
    return inputs


def load_reference(loader: CaseLoader, labels: dict[str, Path], case: str, labels_dir: Path | None
                   ) -> Volume | None:
    """The reference label of ``case`` when it is readable and on the grid."""
    reference = loader.read(labels[case], "label") if case in labels else None
    if reference is None:
        loader.notes.append(f"overview: no reference label for case {case}"
                            + (f" in `{labels_dir}`" if labels_dir else "") + ": reference overlay skipped")
    return loader.on_grid(reference, "the reference label")


def load_segmentations(loader: CaseLoader, seg_preds: list[PredictionFolder], segs: list[dict[str, Path]],
                       case: str) -> list[tuple[PredictionFolder, Volume]]:
    """(folder, segmentation) of each folder that holds a readable segmentation of ``case`` on the grid."""
    volumes = []
    for pred, files in zip(seg_preds, segs):
        if case not in files:
            loader.notes.append(f"overview: no segmentation of case {case} in `{pred.folder}`; panel skipped")
            continue
        volume = loader.on_grid(loader.read(files[case], "segmentation"), f"segmentation `{files[case]}`")
        if volume is not None:
            volumes.append((pred, volume))
    return volumes


def load_syntheses(loader: CaseLoader, translate_preds: list[PredictionFolder],
                   translations: list[dict[str, dict[int, Path]]], case: str, channel_names: list[str],
                   inputs: dict[int, Volume]) -> list[Synthesis]:
    """Each readable synthesised modality of ``case`` on the grid, folder by folder; a folder's input is skipped."""
    syntheses = []
    for pred, files in zip(translate_preds, translations):
        if case not in files:
            loader.notes.append(f"overview: no translation of case {case} in `{pred.folder}`; panels skipped")
            continue
        source = None if pred.is_reference else pred.source_channel(channel_names)  # a reference: titled by its label
        for c, p in sorted(files[case].items()):
            if c == source:
                continue
            volume = loader.on_grid(loader.read(p, "synthesised image"), f"synthesised `{p}`")
            if volume is None:
                continue
            if c not in inputs:
                loader.notes.append(f"overview: no reference {channel_name(channel_names, c)} image of case {case}: "
                                    f"its synthesised panel is shown without reference and difference")
            syntheses.append(Synthesis(pred, c, volume, source))
    return syntheses


def load_case(case: str, files: CaseFiles, notes: list[str], channel_names: list[str], images_dir: Path | None,
              labels_dir: Path | None, seg_preds: list[PredictionFolder],
              translate_preds: list[PredictionFolder]) -> LoadedCase:
    """Read every volume of ``case``, noting in ``notes`` what is missing, unreadable or off the grid."""
    loader = CaseLoader(notes)
    inputs = load_inputs(loader, files.images.get(case, {}), case, images_dir)
    reference = load_reference(loader, files.labels, case, labels_dir)
    segmentations = load_segmentations(loader, seg_preds, files.segs, case)
    syntheses = load_syntheses(loader, translate_preds, files.translations, case, channel_names, inputs)
    return LoadedCase(case, channel_names, inputs, reference, segmentations, syntheses)
