"""Make ``Dataset500_DemoBrain``: simulated four-contrast brain-tumour MRI on real anatomy.

This is a SIMULATION on real anatomy, for demonstration and tests; it is not patient data.
The anatomy is the MNI152 2009a symmetric template (grey- and white-matter probability maps and the
skull-stripped T1 whose non-zero region is the brain mask; 197x233x189 voxels, 1 mm) that the ``nilearn``
wheel ships in ``nilearn/datasets/data/``; the files are read directly (nilearn's fetchers need a network).

Per subject (deterministic for a given ``--seed``):
1. personal anatomy: a random affine (scale 0.92-1.08, rotation up to 6 degrees per axis) and a smooth
   random displacement (std 2.5 mm, about 35 mm smooth) warp the GM, WM and brain-mask maps;
   CSF = brain - GM - WM;
2. a glioma-like tumour at a random deep white-matter point: necrotic core (label 1, NCR), enhancing rim
   (label 3, ET) and an irregular oedema that spreads in tissue, not in CSF (label 2, ED); labels follow
   pirl's BraTS convention and dataset.json declares the BraTS regions. The core (NCR + ET) takes about 36 %
   of the whole tumour's volume (mean of 10 simulated cases; ``CORE_FRACTION``, ``NECROSIS_FRACTION``), within
   the range of real labels (tumour core / whole tumour on the 9 labelled cases in ../shared/data: 0.15-0.78,
   median 0.48, mean 0.44). An earlier, smaller core (~25 %) made the demo too easy
   for a FLAIR threshold (whole-tumour Dice 0.86 on simulated cases, against 0.66 on real BraTS-2015 cases):
   the dark necrosis and the rim, which FLAIR alone does not show as tumour, are what a model must add;
3. four contrasts = sum over tissues of (partial volume x intensity), each intensity varied by +-5 % per
   subject; a smooth multiplicative bias field (log-std 0.08) per contrast; Rician noise (sigma 0.02);
   stored as int16 = 1000 x intensity inside the brain and exactly 0 outside (skull-stripped, like BraTS).

Relative intensities (white matter on T1 = 1). The numbers are chosen; what they reproduce are the orderings
of the standard appearance: T1 WM > GM > CSF; T2 CSF > GM > WM; FLAIR suppresses CSF and GM > WM; oedema
dark on T1 and bright on T2/FLAIR; the enhancing rim bright on T1ce against a dark necrotic core (BraTS
sub-region definitions: Menze et al., IEEE TMI 2015; Bakas et al., arXiv:1811.02629).

============  =====  =====  =====  =====
tissue        T1     T1ce   T2     FLAIR
============  =====  =====  =====  =====
CSF           0.30   0.30   1.60   0.15
GM            0.70   0.72   1.10   0.95
WM            1.00   1.00   0.75   0.80
NCR (1)       0.35   0.40   1.40   0.70
ED  (2)       0.65   0.68   1.35   1.30
ET  (3)       0.75   1.60   1.10   1.05
============  =====  =====  =====  =====

Output: ``-n`` training cases (imagesTr, labelsTr) plus ``--num_test`` held-out cases (default 2) in imagesTs
with their labels in labelsTs (for evaluation demos; case k of either list is the same subject whatever the
other count is). ``--downsample F`` (an integer) block-averages the template to F mm before
anything else (F=4: 49x58x47 voxels, for fast tests). At full size (1 mm) the brain's bounding box exceeds 96 voxels in
every axis, so 96^3 patches are exercised.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from tqdm import tqdm

from dataset_conversion.brats import BRATS_LABELS, CHANNEL_NAMES, REGIONS_CLASS_ORDER, brats_dataset_json_extra
from dataset_conversion.common import RawDatasetWriter, add_output_arguments
from pirl_pipeline.cli.common import cli_entry
from pirl_pipeline.data.image_io import Geometry, read_image
from pirl_pipeline.data.integrity import MIN_SIDE
from pirl_pipeline.errors import PirlInputError

log = logging.getLogger(__name__)

TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
# rows: CSF, GM, WM, NCR, ED, ET; columns: T1, T1ce, T2, FLAIR (see the table in the docstring)
INTENSITY = np.array([[0.30, 0.30, 1.60, 0.15],
                      [0.70, 0.72, 1.10, 0.95],
                      [1.00, 1.00, 0.75, 0.80],
                      [0.35, 0.40, 1.40, 0.70],
                      [0.65, 0.68, 1.35, 1.30],
                      [0.75, 1.60, 1.10, 1.05]], dtype=np.float32)
CSF, GM, WM, NCR, ED, ET = range(6)
LABEL_OF = {NCR: 1, ED: 2, ET: 3}
#: core radius / oedema radius, and necrosis radius / core radius: uniform ranges per subject
CORE_FRACTION, NECROSIS_FRACTION = (0.6, 0.8), (0.5, 0.75)
NUM_TEST_CASES = 2  # default held-out cases
NOISE_SIGMA = 0.02
STORE_SCALE = 1000.0


@dataclass(frozen=True)
class Template:
    """Tissue maps of the template in numpy (z, y, x) order, all float32 in [0, 1]."""

    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    geometry: Geometry


def template_folder() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise PirlInputError("nilearn: package not installed (it ships the MNI152 template the demo needs)")
    return Path(spec.origin).parent / "datasets" / "data"


@functools.lru_cache(maxsize=2)
def load_template(downsample: int = 1) -> Template:
    """The template's GM, WM and brain mask, block-averaged by ``downsample`` in every axis."""
    folder = template_folder()
    t1, gm, wm = (read_image(folder / TEMPLATE.format(k)) for k in ("t1", "gm", "wm"))
    images = [sitk.Cast(image, sitk.sitkFloat32) for image in (gm, wm, t1 > 0)]
    if downsample > 1:
        images = [sitk.BinShrink(image, [downsample] * 3) for image in images]
    gm_a, wm_a, brain_a = (sitk.GetArrayFromImage(image) for image in images)
    return Template(gm_a / np.float32(255), wm_a / np.float32(255), brain_a, Geometry.of(images[0]))


def smooth_field(shape: tuple[int, ...], n_ctrl: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field with zero mean and unit std: Gaussian bumps on an n_ctrl^3 grid, separably."""
    kernels = []
    for n in shape:
        centres = np.linspace(0, n - 1, n_ctrl)
        width = max((n - 1) / max(n_ctrl - 1, 1), 1.0)
        kernels.append(np.exp(-0.5 * ((np.arange(n)[:, None] - centres[None]) / width) ** 2).astype(np.float32))
    coefficients = rng.standard_normal((n_ctrl,) * 3).astype(np.float32)
    field = np.einsum("za,yb,xc,abc->zyx", *kernels, coefficients, optimize=True)
    field -= field.mean()
    return field / max(float(field.std()), 1e-6)


def _rotation(angles: np.ndarray) -> np.ndarray:
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(angle)
        r[i, j], r[j, i] = -np.sin(angle), np.sin(angle)
        matrix = matrix @ r
    return matrix


def deform(template: Template, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp (gm, wm, brain) with a random affine + smooth displacement (personal anatomy)."""
    shape, spacing = template.gm.shape, template.geometry.spacing[0]
    matrix = _rotation(rng.uniform(-6, 6, 3) * np.pi / 180) @ np.diag(rng.uniform(0.92, 1.08, 3))
    centre = np.array(shape, dtype=np.float32) / 2
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) - c for n, c in zip(shape, centre)],
                       indexing="ij", sparse=True)
    n_ctrl = max(3, round(max(shape) * spacing / 35))
    coordinates = [centre[k] + sum(np.float32(matrix[k, j]) * grid[j] for j in range(3))
                   + smooth_field(shape, n_ctrl, rng) * np.float32(2.5 / spacing) for k in range(3)]
    return tuple(ndimage.map_coordinates(m, coordinates, order=1, output=np.float32)
                 for m in (template.gm, template.wm, template.brain))


def add_tumour(gm: np.ndarray, wm: np.ndarray, brain: np.ndarray, spacing: float,
               rng: np.random.Generator) -> np.ndarray:
    """Label map (uint8) with NCR 1 / ED 2 / ET 3 around a random deep white-matter point."""
    candidates = np.argwhere((wm > 0.7) & brain)
    centre = candidates[rng.integers(len(candidates))] if len(candidates) else np.unravel_index(wm.argmax(), wm.shape)
    radius = rng.uniform(15, 30) / spacing * rng.uniform(0.8, 1.25, 3)  # oedema extent per axis, voxels
    core, necrosis = rng.uniform(*CORE_FRACTION), rng.uniform(*NECROSIS_FRACTION)
    half = np.ceil(1.5 * radius).astype(int)
    box = tuple(slice(max(0, c - h), min(n, c + h + 1)) for c, h, n in zip(centre, half, gm.shape))
    offsets = np.meshgrid(*[(np.arange(s.start, s.stop) - c) / r for s, c, r in zip(box, centre, radius)],
                          indexing="ij", sparse=True)
    rho = np.sqrt(sum(o ** 2 for o in offsets)).astype(np.float32)
    box_shape = rho.shape
    rho_core = rho * (1 + 0.2 * smooth_field(box_shape, 5, rng))
    rho_oedema = rho * (1 + 0.3 * smooth_field(box_shape, 7, rng))
    inside, tissue = brain[box], (gm[box] + wm[box]) > 0.5
    label = np.zeros(gm.shape, np.uint8)
    # oedema reaches further along white matter than into grey matter
    label[box][(rho_oedema < 0.7 + 0.5 * wm[box]) & inside & tissue] = LABEL_OF[ED]
    label[box][(rho_core < core) & inside] = LABEL_OF[ET]
    label[box][(rho_core < core * necrosis) & inside] = LABEL_OF[NCR]
    return label


def simulate_subject(template: Template, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Four int16 contrasts (T1, T1ce, T2, FLAIR) and the uint8 label of one simulated subject."""
    gm, wm, brain_soft = deform(template, rng)
    brain = brain_soft > 0.5
    gm, wm = np.clip(gm, 0, 1), np.clip(wm, 0, 1)
    wm = np.minimum(wm, 1 - gm)
    spacing = template.geometry.spacing[0]
    label = add_tumour(gm, wm, brain, spacing, rng)
    intensity = INTENSITY * rng.uniform(0.95, 1.05, INTENSITY.shape).astype(np.float32)
    fractions = {CSF: 1 - gm - wm, GM: gm, WM: wm}
    # partial volume at the tumour border: soften each tumour class by a sub-voxel Gaussian
    tumour = {t: ndimage.gaussian_filter((label == v).astype(np.float32), 0.7) for t, v in LABEL_OF.items()}
    healthy = 1 - sum(tumour.values())
    voxels = np.flatnonzero(brain)
    images = []
    for channel in range(len(CHANNEL_NAMES)):
        signal = healthy * sum(f * intensity[t, channel] for t, f in fractions.items())
        signal += sum(m * intensity[t, channel] for t, m in tumour.items())
        signal *= np.exp(0.08 * smooth_field(gm.shape, 3, rng))
        values = signal.ravel()[voxels]
        noise = rng.standard_normal((2, voxels.size), dtype=np.float32) * NOISE_SIGMA
        values = np.sqrt((values + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude
        image = np.zeros(gm.size, np.int16)
        image[voxels] = np.round(values * STORE_SCALE).astype(np.int16)
        images.append(image.reshape(gm.shape))
    return images, label


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pirl_make_demo_dataset", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    add_output_arguments(parser, default_name="DemoBrain", default_id=500, name_flags=("--name",))
    parser.add_argument("-n", "--num_cases", type=int, default=12, help="training cases (default 12)")
    parser.add_argument("--num_test", type=int, default=NUM_TEST_CASES,
                        help=f"held-out cases in imagesTs/labelsTs (default {NUM_TEST_CASES})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--downsample", type=int, default=1,
                        help="block-average the 1 mm template by this factor first (e.g. 4 for tests)")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_cases < 1 or args.downsample < 1 or args.num_test < 0:
        raise PirlInputError("--num_cases must be >= 1, --num_test >= 0 and --downsample >= 1")
    extra = {**brats_dataset_json_extra(),
             "description": "Simulated T1/T1ce/T2/FLAIR brain-tumour MRI on the MNI152 2009a anatomy "
                            f"(pirl_make_demo_dataset, seed {args.seed}); for demonstration and tests"}
    writer = RawDatasetWriter(args.dataset_id, args.name, CHANNEL_NAMES, BRATS_LABELS, root=args.output_root,
                              overwrite=args.overwrite, regions_class_order=REGIONS_CLASS_ORDER, extra=extra)
    template = load_template(args.downsample)
    if min(template.geometry.shape) < MIN_SIDE:
        raise PirlInputError(f"--downsample {args.downsample}: gives {'x'.join(map(str, template.geometry.shape))}-"
                             f"voxel images; choose a factor that keeps >= {MIN_SIDE} voxels per axis")
    jobs = ([(f"DemoBrain_{i:03d}", "Tr", 0, i) for i in range(args.num_cases)]
            + [(f"DemoBrainTest_{i:03d}", "Ts", 1, i) for i in range(args.num_test)])
    with writer:
        for name, subset, stream, index in tqdm(jobs, desc=f"simulating {writer.target.name}", unit="case"):
            images, label = simulate_subject(template, np.random.default_rng([args.seed, stream, index]))
            writer.add_arrays(name, images, template.geometry, label, subset)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
