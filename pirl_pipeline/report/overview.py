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
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from pirl_pipeline.data.modalities import modality
from pirl_pipeline.evaluation.translation import reference_mask
from pirl_pipeline.plots import save_figure
from pirl_pipeline.report.collect import PredictionFolder
from pirl_pipeline.report.overview_case import (
    LoadedCase,
    Overlay,
    Synthesis,
    Volume,
    as_scored,
    choose_case,
    find_case_files,
    load_case,
    seg_score,
    translate_score,
)

LABEL_COLOURS = ["#e41a1c", "#4daf4a", "#ffd92f", "#377eb8", "#ff7f00", "#984ea3", "#a65628", "#f781bf"]
VIEWS = ("axial", "coronal")
FIGURE_WIDTH = 15.0  # inches
TRANSLATION_COLUMNS = 6.6  # synthesised | reference | difference (with colour bar), twice


@dataclass
class OverviewResult:
    case: str | None = None
    written: bool = False
    slices: dict[str, int] = field(default_factory=dict)
    shown: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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


def background_channel(loaded: LoadedCase, notes: list[str]) -> int | None:
    """The input the segmentations are drawn on: FLAIR, else the last input (None without inputs)."""
    flair = next((c for c in loaded.inputs if modality(loaded.name(c)).name == "FLAIR"), None)
    background = flair if flair is not None else (max(loaded.inputs) if loaded.inputs else None)
    if loaded.inputs and flair is None and (loaded.reference is not None or loaded.segmentations):
        notes.append(f"overview: no FLAIR input; segmentations are overlaid on {loaded.name(background)}")
    return background


@dataclass
class Section:
    """One band of the figure: ``kind`` ("inputs", "translation" or "segmentation"), its rows of panels and
    the columns its panel width is set by."""
    kind: str
    rows: int
    columns: float


def sections_of(loaded: LoadedCase) -> list[Section]:
    """The sections that have something to show, top to bottom."""
    sections = []
    if loaded.inputs:
        sections.append(Section("inputs", 1, 2 * len(loaded.inputs)))
    if loaded.syntheses:
        sections.append(Section("translation", len(loaded.syntheses), TRANSLATION_COLUMNS))
    if loaded.overlays():
        sections.append(Section("segmentation", 1, 2 * len(loaded.overlays())))
    return sections


def section_heights(loaded: LoadedCase, sections: list[Section], box: tuple[slice, slice, slice]) -> list[float]:
    """Height (inches) of the title line, then of each section, for panels of the cropped box's aspect ratio."""
    images = loaded.images()
    spaced = images[0] if images else loaded.reference if loaded.reference is not None else loaded.segmentations[0][1]
    zyx = np.array([b.stop - b.start for b in box]) * np.array(spaced.spacing)
    ratio = max(zyx[1], zyx[0]) / max(zyx[2], 1e-6)  # panel height / width (axial or coronal, the taller)
    return [0.45] + [s.rows * (FIGURE_WIDTH / max(s.columns, 6) * ratio + 0.7) + 0.4 for s in sections]


def draw_title(subfig, loaded: LoadedCase, center: tuple[int, int, int]) -> None:
    """The case, the slices and what they go through."""
    label = loaded.slice_label()
    through = ("image centre" if label is None or not np.any(label > 0) else
               "tumour centre" if loaded.reference is not None else "predicted tumour centre")
    subfig.text(0.5, 0.5, f"case {loaded.case}: axial slice z={center[0]}, coronal slice y={center[1]} (through the "
                f"{through}; radiological view: patient's right on the left)", ha="center", va="center",
                fontsize=12)


def draw_inputs(subfig, loaded: LoadedCase, panels: Panels) -> list[str]:
    """Every input modality, axial and coronal, each in its own window; returns what it shows."""
    subfig.suptitle("input modalities", fontsize=10, fontweight="bold")
    axes = row_axes(subfig, 2 * len(loaded.inputs))
    for i, (c, v) in enumerate(loaded.inputs.items()):
        low, high = window(v.array)
        for j, view in enumerate(VIEWS):
            panels.show(axes[2 * i + j], v, view, f"{loaded.name(c)} {view}", vmin=low, vmax=high)
    return ["inputs: " + ", ".join(loaded.name(c) for c in loaded.inputs)]


def draw_translations(subfig, loaded: LoadedCase, panels: Panels) -> list[str]:
    """One row per synthesised modality; returns what it shows."""
    subfig.suptitle("synthesised modality | reference | difference (synthesised - reference), each "
                    "volume scaled by its own 0.5-99.5 percentiles in the brain to [0, 1], as scored",
                    fontsize=10, fontweight="bold")
    axes = subfig.subplots(len(loaded.syntheses), 6, squeeze=False)
    return [draw_translation_row(subfig, axes[r], synthesis, loaded, panels)
            for r, synthesis in enumerate(loaded.syntheses)]


def draw_translation_row(subfig, axes, synthesis: Synthesis, loaded: LoadedCase, panels: Panels) -> str:
    """Synthesised | reference | difference, axial then coronal, into six ``axes``; returns what it shows."""
    name = loaded.name(synthesis.channel)
    origin = f"from {loaded.name(synthesis.source)}" if synthesis.source is not None else f"({synthesis.pred.label})"
    score = translate_score(synthesis.pred, loaded.case, name)
    synth, ref = synthesis.volume, loaded.inputs.get(synthesis.channel)
    low, high = window(synth.array)
    if ref is not None:
        # synthesised MRI is in z-score units, the reference in scanner units: one raw window showed the
        # synthesis black and the difference as the unit gap; the scores scale each volume alone
        brain = reference_mask(np.stack([v.array for v in loaded.inputs.values()]))
        synth, ref = as_scored(synth, brain), as_scored(ref, brain)
        diff, low, high = Volume(synth.array - ref.array, ref.spacing), 0.0, 1.0
    for j, view in enumerate(VIEWS):
        ax_s, ax_r, ax_d = axes[3 * j: 3 * j + 3]
        panels.show(ax_s, synth, view, f"{name} synthesised {origin}\n{view}"
                    + (f"\n{score}" if score and j == 0 else ""), vmin=low, vmax=high)
        if ref is not None:
            panels.show(ax_r, ref, view, f"{name} reference\n{view}", vmin=low, vmax=high)
            handle = panels.show(ax_d, diff, view, f"difference\n{view}", cmap="RdBu_r", vmin=-1.0, vmax=1.0)
            subfig.colorbar(handle, ax=ax_d, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
        else:
            mark_no_reference((ax_r, ax_d))
    return f"synthesised {name} {origin}"


def mark_no_reference(axes) -> None:
    for ax in axes:
        ax.axis("off")
        ax.text(0.5, 0.5, "no reference", ha="center", va="center", transform=ax.transAxes)


def highest_label(overlays: list[Overlay], label_names: dict[int, str]) -> int:
    """The highest label value in any overlay or in ``label_names``."""
    max_label = int(max(max(o.volume.array.max(), 0) for o in overlays))
    return max([max_label, *label_names]) if label_names else max_label


def label_colourmap(max_label: int) -> ListedColormap:
    """LABEL_COLOURS for labels 1..``max_label`` (one colour when there is no label)."""
    return ListedColormap([LABEL_COLOURS[(i - 1) % len(LABEL_COLOURS)] for i in range(1, max_label + 1)]
                          or ["#e41a1c"])


def draw_segmentations(subfig, loaded: LoadedCase, panels: Panels, background_channel: int | None,
                       label_names: dict[int, str]) -> list[str]:
    """Each overlay on the background channel, axial and coronal, and the legend; returns what it shows."""
    bg_name = loaded.name(background_channel) if background_channel is not None else "no image"
    subfig.suptitle(f"segmentation overlaid on {bg_name}", fontsize=10, fontweight="bold")
    overlays = loaded.overlays()
    max_label = highest_label(overlays, label_names)
    colours = label_colourmap(max_label)
    axes = row_axes(subfig, 2 * len(overlays))
    background = loaded.inputs.get(background_channel) if background_channel is not None else None
    for i, overlay in enumerate(overlays):
        draw_overlay(axes[2 * i: 2 * i + 2], overlay, background, panels, colours, max(max_label, 1), loaded.case)
    draw_legend(subfig, overlays, label_names)
    return [f"segmentation: {o.title}" for o in overlays]


def draw_overlay(axes, overlay: Overlay, background: Volume | None, panels: Panels, colours: ListedColormap,
                 top_label: int, case: str) -> None:
    """``overlay`` on ``background`` (black without one), axial and coronal, titled with its Dice."""
    score = seg_score(overlay.pred, case)
    for j, (ax, view) in enumerate(zip(axes, VIEWS)):
        if background is not None:
            low, high = window(background.array)
            panels.show(ax, background, view, "", vmin=low, vmax=high)
        else:
            v = overlay.volume
            panels.show(ax, Volume(np.zeros_like(v.array), v.spacing), view, "", vmin=0, vmax=1)
        panels.overlay(ax, overlay.volume, view, colours, top_label)
        ax.set_title(f"{overlay.title}\n{view}" + (f"\n{score}" if score and j == 0 else ""), fontsize=9)


def draw_legend(subfig, overlays: list[Overlay], label_names: dict[int, str]) -> None:
    """One patch per label value present in any overlay (none when all are empty)."""
    values = sorted({int(x) for o in overlays for x in np.unique(o.volume.array) if x > 0})
    handles = [Patch(color=LABEL_COLOURS[(k - 1) % len(LABEL_COLOURS)],
                     label=f"{k} {label_names.get(k, '')}".strip()) for k in values]
    if handles:
        subfig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)


def draw_figure(loaded: LoadedCase, panels: Panels, background: int | None, label_names: dict[int, str],
                shown: list[str]) -> plt.Figure:
    """The title line and every section with something to show; appends what is shown to ``shown``."""
    sections = sections_of(loaded)
    heights = section_heights(loaded, sections, panels.box)
    fig = plt.figure(figsize=(FIGURE_WIDTH, sum(heights)), layout="constrained")
    subfigs = fig.subfigures(len(sections) + 1, 1, height_ratios=heights, squeeze=False)[:, 0]
    draw_title(subfigs[0], loaded, panels.center)
    for subfig, section in zip(subfigs[1:], sections):
        if section.kind == "inputs":
            shown += draw_inputs(subfig, loaded, panels)
        elif section.kind == "translation":
            shown += draw_translations(subfig, loaded, panels)
        else:
            shown += draw_segmentations(subfig, loaded, panels, background, label_names)
    return fig


def draw_overview(path: Path, *, channel_names: list[str], label_names: dict[int, str], file_ending: str,
                  images_dir: Path | None, labels_dir: Path | None, seg_preds: list[PredictionFolder],
                  translate_preds: list[PredictionFolder], case: str | None = None) -> OverviewResult:
    """Write ``path`` (overview.png) for ``case`` (default: :func:`choose_case`); the result says what is shown
    and, in notes, what is skipped and why."""
    result = OverviewResult()
    files = find_case_files(file_ending, images_dir, labels_dir, seg_preds, translate_preds)
    result.case = case = choose_case(case, files.images, files.labels, files.segs, files.translations)
    if case is None:
        result.notes.append("overview: no input images and no predictions found, so no case to show")
        return result
    loaded = load_case(case, files, result.notes, channel_names, images_dir, labels_dir, seg_preds, translate_preds)
    images, label = loaded.images(), loaded.slice_label()
    if not images and label is None:
        result.notes.append(f"overview: nothing to show for case {case}")
        return result
    center = pick_slices(images, label)
    result.slices = {"axial (z)": center[0], "coronal (y)": center[1]}
    panels = Panels(center, crop_box([v.array for v in images] or [label]))
    background = background_channel(loaded, result.notes)
    save_figure(draw_figure(loaded, panels, background, label_names, result.shown), path)
    result.written = True
    return result
