"""``overview.png``: one held-out case at a glance.

Sections (each skipped, with a note, when its inputs are missing):
1. every input modality, axial and coronal;
2. each synthesised modality next to its reference and the difference map (synthesised - reference), both
   scaled as the translation scores scale them (:func:`as_scored`);
3. the reference label and each predicted segmentation overlaid on FLAIR.

Slices go through the centre of mass of the tumour (reference label, else the first predicted
segmentation), else through the centre of the non-zero box. Volumes are reoriented to LPS, so the axial
view is radiological (patient's right on the image's left, anterior up) and the coronal view has superior
up; aspect ratios follow the voxel spacing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from pirl_pipeline.data.dataset_json import list_label_files, parse_channel_file_name, whole_target
from pirl_pipeline.data.modalities import modality
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.image_similarity import percentile_scale
from pirl_pipeline.evaluation.translation import reference_mask
from pirl_pipeline.plots import save_figure
from pirl_pipeline.report.collect import PredictionFolder, format_value

LABEL_COLOURS = ["#e41a1c", "#4daf4a", "#ffd92f", "#377eb8", "#ff7f00", "#984ea3", "#a65628", "#f781bf"]


@dataclass
class Volume:
    array: np.ndarray  # (z, y, x) in LPS order
    spacing: tuple[float, float, float]  # (z, y, x)


@dataclass
class OverviewResult:
    case: str | None = None
    written: bool = False
    slices: dict[str, int] = field(default_factory=dict)
    shown: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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


def pick_slices(volumes: list[Volume], label: np.ndarray | None) -> tuple[int, int, int]:
    """(z, y, x) through the tumour's centre of mass, else the centre of the non-zero box."""
    shape = volumes[0].array.shape if volumes else label.shape
    if label is not None and np.any(label > 0):
        return tuple(round(float(c.mean())) for c in np.nonzero(label > 0))
    body = np.zeros(shape, bool)
    for v in volumes:
        body |= v.array != 0
    if body.any():
        idx = np.nonzero(body)
        return tuple(int((i.min() + i.max()) // 2) for i in idx)
    return tuple(s // 2 for s in shape)


def crop_box(volumes: list[np.ndarray], margin: int = 3) -> tuple[slice, slice, slice]:
    """The non-zero bounding box of all ``volumes`` plus ``margin`` voxels (the whole grid when all are 0)."""
    shape = volumes[0].shape
    body = np.zeros(shape, bool)
    for v in volumes:
        body |= v != 0
    if not body.any():
        return tuple(slice(0, s) for s in shape)
    return tuple(slice(max(0, int(i.min()) - margin), min(s, int(i.max()) + margin + 1))
                 for i, s in zip(np.nonzero(body), shape))


def window(array: np.ndarray) -> tuple[float, float]:
    values = array[np.isfinite(array) & (array != 0)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [0.5, 99.5])
    low = min(0.0, float(low))
    return low, float(high) if high > low else low + 1.0


def as_scored(volume: Volume, brain: np.ndarray) -> Volume:
    """``volume`` as the translation scores see it: scaled by its own 0.5-99.5 percentiles inside ``brain`` to
    [0, 1] (``percentile_scale``), 0 outside; a synthesis in z-score units and its reference in scanner units
    then share one grey scale."""
    return Volume(np.where(brain, percentile_scale(volume.array, brain), 0.0), volume.spacing)


class Panels:
    """Draw axial/coronal views of a volume into axes with the right orientation and aspect ratio."""

    def __init__(self, center: tuple[int, int, int], box: tuple[slice, slice, slice]) -> None:
        self.center, self.box = center, box  # box: the crop (z, y, x) every view shares

    def view(self, array: np.ndarray, spacing: tuple[float, ...], view: str) -> tuple[np.ndarray, float, str]:
        z, y, _ = self.center
        bz, by, bx = self.box
        if view == "axial":
            return array[min(z, array.shape[0] - 1), by, bx], spacing[1] / spacing[2], "upper"
        return array[bz, min(y, array.shape[1] - 1), bx], spacing[0] / spacing[2], "lower"

    def show(self, ax, volume: Volume, view: str, title: str, cmap: str = "gray", vmin: float | None = None,
             vmax: float | None = None):
        image, aspect, origin = self.view(volume.array, volume.spacing, view)
        handle = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect, origin=origin,
                           interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        return handle

    def overlay(self, ax, label: Volume, view: str, colours: ListedColormap, max_label: int) -> None:
        image, aspect, origin = self.view(label.array, label.spacing, view)
        masked = np.ma.masked_where(image <= 0, image)
        ax.imshow(masked, cmap=colours, vmin=0.5, vmax=max_label + 0.5, alpha=0.55, aspect=aspect, origin=origin,
                  interpolation="nearest")


def row_axes(subfig, n: int, min_columns: int = 6) -> list:
    """``n`` axes in one row, centred in a grid of at least ``min_columns`` equal columns."""
    columns = max(n, min_columns)
    axes = subfig.subplots(1, columns, squeeze=False)[0]
    start = (columns - n) // 2
    for i, ax in enumerate(axes):
        if not start <= i < start + n:
            ax.axis("off")
    return list(axes[start: start + n])


def _case_metrics(pred: PredictionFolder | None, case: str) -> dict:
    """``{target: {metric: value}}`` of one case from a pirl_evaluate summary (empty when not evaluated)."""
    if pred is None or not pred.summary:
        return {}
    return next((e.get("metrics") or {} for e in pred.summary.get("per_case", []) if e.get("case") == case), {})


def seg_score(pred: PredictionFolder | None, case: str) -> str:
    """"Dice whole tumor 0.812" (the first region, else the mean over labels) or ""."""
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


def draw_overview(path: Path, *, channel_names: list[str], label_names: dict[int, str], file_ending: str,
                  images_dir: Path | None, labels_dir: Path | None, seg_preds: list[PredictionFolder],
                  translate_preds: list[PredictionFolder], case: str | None = None) -> OverviewResult:
    result = OverviewResult()
    images = channel_files(images_dir, file_ending) if images_dir else {}
    labels = list_label_files(labels_dir, file_ending)
    segs = [list_label_files(p.folder, file_ending) for p in seg_preds]
    translations = [channel_files(p.folder, file_ending) for p in translate_preds]
    result.case = case = choose_case(case, images, labels, segs, translations)
    if case is None:
        result.notes.append("overview: no input images and no predictions found, so no case to show")
        return result

    def load(p: Path, what: str) -> Volume | None:
        try:
            return read_volume(p)
        except (RuntimeError, ValueError) as err:
            result.notes.append(f"overview: {what} `{p}` is unreadable ({str(err).splitlines()[0][:80]}); skipped")
            return None

    def name(c: int) -> str:
        return channel_names[c] if c < len(channel_names) else f"channel {c:04d}"

    inputs = {c: v for c, p in sorted(images.get(case, {}).items()) if (v := load(p, "image")) is not None}
    if not inputs:
        where = f"`{images_dir}`" if images_dir else "(no images folder)"
        result.notes.append(f"overview: no input images of case {case} in {where}: input and reference panels "
                            "skipped")
    reference = load(labels[case], "label") if case in labels else None
    if reference is None:
        result.notes.append(f"overview: no reference label for case {case}"
                            + (f" in `{labels_dir}`" if labels_dir else "") + ": reference overlay skipped")
    grid = next(iter(inputs.values())).array.shape if inputs else None

    def on_grid(v: Volume | None, what: str) -> Volume | None:
        nonlocal grid
        if v is None:
            return None
        if grid is None:
            grid = v.array.shape
        if v.array.shape != grid:
            result.notes.append(f"overview: {what} has shape {v.array.shape}, not the input's {grid}; skipped")
            return None
        return v

    reference = on_grid(reference, "the reference label")
    seg_volumes = []
    for pred, files in zip(seg_preds, segs):
        if case not in files:
            result.notes.append(f"overview: no segmentation of case {case} in `{pred.folder}`; panel skipped")
            continue
        volume = on_grid(load(files[case], "segmentation"), f"segmentation `{files[case]}`")
        if volume is not None:
            seg_volumes.append((pred, volume))
    synth_rows = []  # (pred, channel, synthesised volume, source channel or None)
    for pred, files in zip(translate_preds, translations):
        if case not in files:
            result.notes.append(f"overview: no translation of case {case} in `{pred.folder}`; panels skipped")
            continue
        source = pred.source_channel(channel_names)
        for c, p in sorted(files[case].items()):
            if c == source:
                continue
            volume = on_grid(load(p, "synthesised image"), f"synthesised `{p}`")
            if volume is None:
                continue
            if c not in inputs:
                result.notes.append(f"overview: no reference {name(c)} image of case {case}: "
                                    f"its synthesised panel is shown without reference and difference")
            synth_rows.append((pred, c, volume, source))

    label_for_slices = reference.array if reference is not None else (
        seg_volumes[0][1].array if seg_volumes else None)
    volumes = list(inputs.values()) + [v for _, _, v, _ in synth_rows]
    if not volumes and label_for_slices is None:
        result.notes.append(f"overview: nothing to show for case {case}")
        return result
    center = pick_slices(volumes, label_for_slices)
    result.slices = {"axial (z)": center[0], "coronal (y)": center[1]}
    box = crop_box([v.array for v in volumes] or [label_for_slices])
    panels = Panels(center, box)
    flair = next((c for c in inputs if modality(name(c)).name == "FLAIR"), None)
    background_channel = flair if flair is not None else (max(inputs) if inputs else None)
    if inputs and flair is None and (reference is not None or seg_volumes):
        result.notes.append(f"overview: no FLAIR input; segmentations are overlaid on {name(background_channel)}")

    sections: list[tuple[str, int]] = []  # (kind, number of rows)
    if inputs:
        sections.append(("inputs", 1))
    if synth_rows:
        sections.append(("translation", len(synth_rows)))
    overlays = ([("reference label", reference)] if reference is not None else []) + \
        [(f"predicted ({pred.label})", v) for pred, v in seg_volumes]
    if overlays:
        sections.append(("segmentation", 1))
    ref_shape = volumes[0] if volumes else reference if reference is not None else seg_volumes[0][1]
    zyx = np.array([b.stop - b.start for b in box]) * np.array(ref_shape.spacing)
    ratio = max(zyx[1], zyx[0]) / max(zyx[2], 1e-6)  # panel height / width (axial or coronal, the taller)
    columns = {"inputs": 2 * len(inputs), "translation": 6.6, "segmentation": 2 * len(overlays)}
    width = 15.0
    heights = [0.45] + [rows * (width / max(columns[kind], 6) * ratio + 0.7) + 0.4 for kind, rows in sections]
    fig = plt.figure(figsize=(width, sum(heights)), layout="constrained")
    subfigs = fig.subfigures(len(sections) + 1, 1, height_ratios=heights, squeeze=False)[:, 0]
    through = ("image centre" if label_for_slices is None or not np.any(label_for_slices > 0) else
               "tumour centre" if reference is not None else "predicted tumour centre")
    subfigs[0].text(0.5, 0.5, f"case {case}: axial slice z={center[0]}, coronal slice y={center[1]} (through the "
                    f"{through}; radiological view: patient's right on the left)", ha="center", va="center",
                    fontsize=12)
    subfigs = subfigs[1:]
    for subfig, (kind, rows) in zip(subfigs, sections):
        if kind == "inputs":
            subfig.suptitle("input modalities", fontsize=10, fontweight="bold")
            axes = row_axes(subfig, 2 * len(inputs))
            for i, (c, v) in enumerate(inputs.items()):
                low, high = window(v.array)
                for j, view in enumerate(("axial", "coronal")):
                    panels.show(axes[2 * i + j], v, view, f"{name(c)} {view}", vmin=low, vmax=high)
            result.shown.append("inputs: " + ", ".join(name(c) for c in inputs))
        elif kind == "translation":
            subfig.suptitle("synthesised modality | reference | difference (synthesised - reference), each "
                            "volume scaled by its own 0.5-99.5 percentiles in the brain to [0, 1], as scored",
                            fontsize=10, fontweight="bold")
            axes = subfig.subplots(rows, 6, squeeze=False)
            for r, (pred, c, synth, source) in enumerate(synth_rows):
                ref = inputs.get(c)
                origin = f"from {name(source)}" if source is not None else f"({pred.label})"
                score = translate_score(pred, case, name(c))
                diff, low, high = None, *window(synth.array)
                if ref is not None:
                    # synthesised MRI is in z-score units, the reference in scanner units: one raw window showed
                    # the synthesis black and the difference as the unit gap; the scores scale each volume alone
                    brain = reference_mask(np.stack([v.array for v in inputs.values()]))
                    synth, ref = as_scored(synth, brain), as_scored(ref, brain)
                    diff, low, high = (Volume(synth.array - ref.array, ref.spacing), 1.0), 0.0, 1.0
                for j, view in enumerate(("axial", "coronal")):
                    ax_s, ax_r, ax_d = axes[r, 3 * j: 3 * j + 3]
                    panels.show(ax_s, synth, view, f"{name(c)} synthesised {origin}\n{view}"
                                + (f"\n{score}" if score and j == 0 else ""), vmin=low, vmax=high)
                    if ref is not None:
                        panels.show(ax_r, ref, view, f"{name(c)} reference\n{view}", vmin=low, vmax=high)
                        handle = panels.show(ax_d, diff[0], view, f"difference\n{view}", cmap="RdBu_r",
                                             vmin=-diff[1], vmax=diff[1])
                        subfig.colorbar(handle, ax=ax_d, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
                    else:
                        for ax in (ax_r, ax_d):
                            ax.axis("off")
                            ax.text(0.5, 0.5, "no reference", ha="center", va="center", transform=ax.transAxes)
                result.shown.append(f"synthesised {name(c)} {origin}")
        else:
            bg_name = name(background_channel) if background_channel is not None else "no image"
            subfig.suptitle(f"segmentation overlaid on {bg_name}", fontsize=10, fontweight="bold")
            max_label = int(max(max(v.array.max(), 0) for _, v in overlays))
            values = sorted({int(x) for _, v in overlays for x in np.unique(v.array) if x > 0})
            max_label = max([max_label, *label_names]) if label_names else max_label
            colours = ListedColormap([LABEL_COLOURS[(i - 1) % len(LABEL_COLOURS)] for i in range(1, max_label + 1)]
                                     or ["#e41a1c"])
            axes = row_axes(subfig, 2 * len(overlays))
            background = inputs.get(background_channel) if background_channel is not None else None
            for i, (title, v) in enumerate(overlays):
                pred = next((p for p, vol in seg_volumes if vol is v), None)
                score = seg_score(pred, case)
                for j, view in enumerate(("axial", "coronal")):
                    ax = axes[2 * i + j]
                    if background is not None:
                        low, high = window(background.array)
                        panels.show(ax, background, view, "", vmin=low, vmax=high)
                    else:
                        panels.show(ax, Volume(np.zeros_like(v.array), v.spacing), view, "", vmin=0, vmax=1)
                    panels.overlay(ax, v, view, colours, max(max_label, 1))
                    ax.set_title(f"{title}\n{view}" + (f"\n{score}" if score and j == 0 else ""), fontsize=9)
                result.shown.append(f"segmentation: {title}")
            handles = [Patch(color=LABEL_COLOURS[(k - 1) % len(LABEL_COLOURS)],
                             label=f"{k} {label_names.get(k, '')}".strip()) for k in (values or [])]
            if handles:
                subfig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    save_figure(fig, path)
    result.written = True
    return result
