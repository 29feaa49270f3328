"""The benchmarks' raw dataset: the real 4-modality BraTS cases of ../shared/data as an nnU-Net-v2 raw dataset
(images symlinked; labels symlinked or converted to {0, 1, 2, 3}; optional replicas under other case names)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

CHANNELS = {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
LABELS = {"background": 0, "label_1": 1, "label_2": 2, "label_3": 3}
NAMINGS = {  # channel index -> file suffix, then the label suffix
    "brats2020": (["_t1", "_t1ce", "_t2", "_flair"], "_seg"),
    "brats2023": (["-t1n", "-t1c", "-t2w", "-t2f"], "-seg"),
}
LABEL_MAP = {4: 3}  # BraTS <= 2021 enhancing tumour -> the 2023 value


def find_source_cases(data_root: Path) -> list[dict]:
    """Every folder under ``data_root/brats20*_style`` holding a complete 4-modality case with a label."""
    cases = []
    for folder in sorted(data_root.glob("brats20*_style/*")):
        for naming, (suffixes, seg_suffix) in NAMINGS.items():
            images = [folder / f"{folder.name}{s}.nii.gz" for s in suffixes]
            label = folder / f"{folder.name}{seg_suffix}.nii.gz"
            if all(p.is_file() for p in images) and label.is_file():
                cases.append({"source": str(folder), "naming": naming, "images": images, "label": label})
                break
    return cases


def prepare_label(label: Path, out: Path) -> str:
    """Symlink the label when it is already an integer map within LABELS, else write a converted copy."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(label))
    array = sitk.GetArrayViewFromImage(image)
    values = {int(v) for v in np.unique(array)}
    integer = np.issubdtype(array.dtype, np.integer)
    if integer and values <= set(LABELS.values()):
        out.symlink_to(label)
        return "symlink"
    mapped = np.asarray(array).copy()
    for old, new in LABEL_MAP.items():
        mapped[mapped == old] = new
    unknown = {int(v) for v in np.unique(mapped)} - set(LABELS.values())
    if unknown:
        raise SystemExit(f"{label}: label values {sorted(unknown)} cannot be mapped to {sorted(LABELS.values())}")
    converted = sitk.GetImageFromArray(mapped.astype(np.uint8))
    converted.CopyInformation(image)
    sitk.WriteImage(converted, str(out), True)
    return f"converted ({sorted(values)} -> uint8, {LABEL_MAP})"


def build_dataset(data_root: Path, raw_root: Path, dataset_id: int, replicate: int) -> dict:
    sources = find_source_cases(data_root)
    if not sources:
        raise SystemExit(f"{data_root}: no 4-modality BraTS cases found (brats2020_style/, brats2023_style/)")
    folder = raw_root / f"Dataset{dataset_id:03d}_BenchBraTS"
    for stale in raw_root.glob(f"Dataset{dataset_id:03d}_*"):
        shutil.rmtree(stale)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    mapping, label_handling = {}, {}
    for i, src in enumerate(sources):
        base = f"case{i:03d}"
        first_label = folder / "labelsTr" / f"{base}.nii.gz"
        label_handling[base] = prepare_label(src["label"], first_label)
        for k in range(replicate):
            name = base if k == 0 else f"{base}rep{k}"
            for c, image in enumerate(src["images"]):
                (folder / "imagesTr" / f"{name}_{c:04d}.nii.gz").symlink_to(image)
            if k:
                (folder / "labelsTr" / f"{name}.nii.gz").symlink_to(first_label.resolve())
            mapping[name] = {"source": src["source"], "naming": src["naming"], "replica_of": base if k else None}
    dataset_json = {"channel_names": CHANNELS, "labels": LABELS, "numTraining": len(mapping),
                    "file_ending": ".nii.gz", "name": "BenchBraTS",
                    "description": "real BraTS cases from ../shared/data (symlinks), for benchmarks/preprocess.py"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
    return {"folder": str(folder), "name": folder.name, "num_cases": len(mapping),
            "distinct_cases": len(sources), "replicate": replicate, "cases": mapping, "labels": label_handling}
