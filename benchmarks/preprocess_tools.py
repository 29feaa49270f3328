"""What ``benchmarks/preprocess.py`` runs inside each tool's own interpreter (pirl's venv or nnU-Net's):

    <venv>/bin/python benchmarks/preprocess_tools.py MODE SPEC_JSON      # prints one JSON line

Modes: ``compare`` (nnU-Net venv: shapes and voxel-wise differences of both preprocessed outputs),
``preprocess_pirl``, ``profile_pirl`` and ``profile_nnunet`` (per-case step timings). Only the standard
library and numpy are imported at the top, so the file runs in either venv.
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script inside either venv
    sys.path.insert(0, str(REPO))
from benchmarks.bench_dataset import CHANNELS


def seg_storage(seg: np.ndarray) -> type:
    """pirl's label dtype rule (``dataset_json.seg_dtype``), restated: this file also runs without pirl."""
    return np.int8 if seg.max() <= 127 else np.int16


def internal_compare(spec: dict) -> dict:
    """Runs in the nnU-Net venv (blosc2): shapes and voxel-wise differences of both preprocessed outputs."""
    import pickle

    import blosc2

    out = {"cases": {}}
    for case in spec["cases"]:
        pirl_data = np.load(Path(spec["pirl_folder"]) / f"{case}.npy")
        pirl_seg = np.load(Path(spec["pirl_folder"]) / f"{case}_seg.npy")
        pirl_props = json.loads((Path(spec["pirl_folder"]) / f"{case}.json").read_text())
        nn_data = blosc2.open(urlpath=str(Path(spec["nnunet_folder"]) / f"{case}.b2nd"), mode="r")[:]
        nn_seg = blosc2.open(urlpath=str(Path(spec["nnunet_folder"]) / f"{case}_seg.b2nd"), mode="r")[:]
        with open(Path(spec["nnunet_folder"]) / f"{case}.pkl", "rb") as f:
            nn_props = pickle.load(f)
        row = {"pirl_shape": list(pirl_data.shape), "nnunet_shape": list(nn_data.shape),
               "pirl_seg_shape": list(pirl_seg.shape), "nnunet_seg_shape": list(nn_seg.shape),
               "pirl_dtype": str(pirl_data.dtype), "nnunet_dtype": str(nn_data.dtype),
               "pirl_bbox": pirl_props.get("bbox_used_for_cropping"),
               "nnunet_bbox": [list(map(int, b)) for b in nn_props["bbox_used_for_cropping"]],
               "nnunet_spacing": [float(s) for s in nn_props["spacing"]],
               "pirl_class_location_counts": {k: len(v) for k, v in pirl_props.get("class_locations", {}).items()},
               "nnunet_class_location_counts": {str(k): len(v) for k, v in nn_props["class_locations"].items()}}
        if pirl_data.shape == nn_data.shape:
            diff = np.abs(pirl_data.astype(np.float64) - nn_data.astype(np.float64))
            row["data_mean_abs_diff"] = float(diff.mean())
            row["data_max_abs_diff"] = float(diff.max())
            row["data_mean_abs_diff_per_channel"] = [float(d.mean()) for d in diff]
            row["data_voxels_differing_gt_1e-3"] = int((diff.max(0) > 1e-3).sum())
            row["nnunet_data_mean_abs"] = float(np.abs(nn_data).mean())
            inside = (pirl_seg[0] >= 0) & (nn_seg[0] >= 0)
            row["data_mean_abs_diff_inside_both_masks"] = float(diff[:, inside].mean()) if inside.any() else 0.0
        if pirl_seg.shape == nn_seg.shape:
            a, b = pirl_seg.astype(np.int16), nn_seg.astype(np.int16)
            row["seg_voxels_differing"] = int((a != b).sum())
            row["seg_voxels"] = int(a.size)
            row["seg_minus1_pirl_0_nnunet"] = int(((a == -1) & (b == 0)).sum())
            row["seg_0_pirl_minus1_nnunet"] = int(((a == 0) & (b == -1)).sum())
            row["seg_foreground_differing"] = int(((a > 0) != (b > 0)).sum())
            row["seg_dice_per_class"] = {int(c): float(2 * ((a == c) & (b == c)).sum() / max(1, (a == c).sum()
                                                                                            + (b == c).sum()))
                                         for c in np.unique(np.concatenate([a[a > 0], b[b > 0]]))}
        out["cases"][case] = row
    return out


def _timed(fn, repeats: int):
    """(median seconds, last result) of ``fn()`` over ``repeats`` calls."""
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def _pirl_case_steps(case, ctx: dict, add) -> None:
    """Time pirl's per-case steps on one case (the same calls its CLI makes, in the same order)."""
    import hashlib

    from pirl_pipeline.data.geometry import crop_to_nonzero, shape_for_spacing
    from pirl_pipeline.data.integrity import load_case
    from pirl_pipeline.file_io import save_json, save_npy
    from pirl_pipeline.preprocessing.normalization import normalize_channel
    from pirl_pipeline.preprocessing.preprocessor import class_locations, plans_fingerprint
    from pirl_pipeline.preprocessing.resampling import resample
    from plans.fingerprint import case_fingerprint

    dj, plans, config, r, tmp = ctx["dj"], ctx["plans"], ctx["config"], ctx["repeats"], ctx["tmp"]
    t_read, loaded = _timed(lambda: load_case(case, dj.label_values, check=False), r)
    t_checked, _ = _timed(lambda: load_case(case, dj.label_values, check=True), r)
    add("read (SimpleITK + float32 stack)", t_read)
    add("integrity check (extra over read)", t_checked - t_read)
    t_fp, _ = _timed(lambda: case_fingerprint(case, dj, check=True), r)
    add("fingerprint pass total (read+check+stats)", t_fp)
    add("fingerprint stats (extra over read+check)", t_fp - t_checked)
    t, (data, seg, _) = _timed(lambda: crop_to_nonzero(loaded.data.copy(), loaded.label), r)
    add("crop to non-zero", t)
    mask = seg >= 0

    def normalise():
        out = data.copy()
        for c in range(out.shape[0]):
            props = plans.foreground_intensity_properties_per_channel[str(c)]
            out[c], _ = normalize_channel(out[c], config.normalization_schemes[c], mask, props,
                                          config.use_mask_for_norm[c])
        return out
    t, normed = _timed(normalise, r)
    add("normalise", t)
    spacing = loaded.geometry.spacing
    new_shape = shape_for_spacing(normed.shape[1:], spacing, config.spacing)
    t, res = _timed(lambda: resample(normed, new_shape, is_label=False, spacing=spacing).astype(np.float32), r)
    add("resample data", t)
    t, res_seg = _timed(lambda: resample(seg, new_shape, is_label=True, spacing=spacing), r)
    add("resample seg", t)
    rng = np.random.default_rng(int(hashlib.sha1(case.name.encode()).hexdigest()[:8], 16))
    t, locs = _timed(lambda: class_locations(res_seg, ctx["foreground"], rng), r)
    add("class locations", t)
    props = {"class_locations": locs, "plans_fingerprint": plans_fingerprint(plans, config),
             "geometry": loaded.geometry.to_dict()}
    t, _ = _timed(lambda: save_npy(res, tmp / f"{case.name}.npy"), r)
    add("save data .npy", t)
    t, _ = _timed(lambda: save_npy(res_seg[None].astype(seg_storage(res_seg)), tmp / f"{case.name}_seg.npy"), r)
    add("save seg .npy", t)
    t, _ = _timed(lambda: save_json(props, tmp / f"{case.name}.json", indent=None), r)
    add("save properties .json", t)


def internal_profile_pirl(spec: dict) -> dict:
    """Runs under pirl's python: per-case step times of pirl's fingerprint and preprocessing passes."""
    import tempfile

    import SimpleITK as sitk

    from pirl_pipeline.data.dataset_json import list_cases, load_dataset_json
    from plans.plans_manager import Plans

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(spec["threads"])
    raw = Path(spec["raw_folder"])
    dj = load_dataset_json(raw)
    plans = Plans.load(spec["plans_file"])
    tmp = Path(tempfile.mkdtemp(dir=spec["tmp"]))
    ctx = {"dj": dj, "plans": plans, "config": plans.configuration("3d_fullres"), "repeats": spec["repeats"],
           "tmp": tmp, "foreground": sorted(v for v in dj.label_values if v > 0)}
    steps: dict[str, list[float]] = {}
    for case in list_cases(raw, dj):
        if case.name in spec["cases"]:
            _pirl_case_steps(case, ctx, lambda step, seconds: steps.setdefault(step, []).append(seconds))
    shutil.rmtree(tmp)
    return {"median_seconds_per_case": {k: statistics.median(v) for k, v in steps.items()}, "per_case": steps}


def _nnunet_case_steps(name: str, ctx: dict, add) -> None:
    """Time nnU-Net's per-case steps on one case through its own functions (DefaultPreprocessor's order)."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.verify_dataset_integrity import check_cases
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

    raw, pm, cm, pre, r, tmp = (ctx[k] for k in ("raw", "pm", "cm", "pre", "repeats", "tmp"))
    images = [str(raw / "imagesTr" / f"{name}_{c:04d}.nii.gz") for c in range(len(CHANNELS))]
    label = str(raw / "labelsTr" / f"{name}.nii.gz")
    rw = SimpleITKIO()

    def read():
        data, props = rw.read_images(images)
        seg, _ = rw.read_seg(label)
        return data, seg, props
    t_read, (data, seg, props) = _timed(read, r)
    add("read (SimpleITK + float32 stack)", t_read)
    t, _ = _timed(lambda: check_cases(images, label, len(CHANNELS), SimpleITKIO), r)
    add("integrity check (verify_dataset_integrity, incl. its own read)", t)
    t, _ = _timed(lambda: DatasetFingerprintExtractor.analyze_case(images, label, SimpleITKIO, 10000), r)
    add("fingerprint pass total (read+stats), 10,000 samples per channel", t)
    per_case = int(DatasetFingerprintExtractor(ctx["dataset_name"], 1).num_foreground_voxels_for_intensitystats
                   // ctx["num_cases"])
    t, _ = _timed(lambda: DatasetFingerprintExtractor.analyze_case(images, label, SimpleITKIO, per_case), r)
    add(f"fingerprint pass total, CLI's 1e8/{ctx['num_cases']} = {per_case:,} samples per channel", t)
    data = data.astype(np.float32).transpose([0, *[i + 1 for i in pm.transpose_forward]])
    seg = seg.transpose([0, *[i + 1 for i in pm.transpose_forward]])
    spacing = [props["spacing"][i] for i in pm.transpose_forward]
    t, (cdata, cseg, _) = _timed(lambda: crop_to_nonzero(data.copy(), seg.copy()), r)
    add("crop to non-zero (incl. binary_fill_holes)", t)
    t, normed = _timed(lambda: pre._normalize(cdata.copy(), cseg, cm, pm.foreground_intensity_properties_per_channel),
                       r)
    add("normalise", t)
    new_shape = compute_new_shape(normed.shape[1:], spacing, cm.spacing)
    t, res = _timed(lambda: cm.resampling_fn_data(normed, new_shape, spacing, cm.spacing), r)
    add("resample data", t)
    t, res_seg = _timed(lambda: cm.resampling_fn_seg(cseg, new_shape, spacing, cm.spacing), r)
    add("resample seg", t)
    t, locs = _timed(lambda: pre._sample_foreground_locations(res_seg, ctx["regions"]), r)
    add("class locations", t)
    res = res.astype(np.float32, copy=False)
    res_seg = res_seg.astype(seg_storage(res_seg))

    def save():
        bd, cd = comp_blosc2_params(res.shape, tuple(cm.patch_size), res.itemsize)
        bs, cs = comp_blosc2_params(res_seg.shape, tuple(cm.patch_size), res_seg.itemsize)
        for suffix in (".b2nd", "_seg.b2nd"):
            (tmp / f"{name}{suffix}").unlink(missing_ok=True)
        nnUNetDatasetBlosc2.save_case(res, res_seg, {"class_locations": locs}, str(tmp / name),
                                      chunks=cd, blocks=bd, chunks_seg=cs, blocks_seg=bs)
    t, _ = _timed(save, r)
    add("save (blosc2 data+seg, pkl)", t)


def internal_profile_nnunet(spec: dict) -> dict:
    """Runs in the nnU-Net venv: the same per-case steps through nnU-Net's own functions."""
    import tempfile

    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    raw = Path(spec["raw_folder"])
    pm = PlansManager(json.loads(Path(spec["plans_file"]).read_text()))
    lm = pm.get_label_manager(json.loads((raw / "dataset.json").read_text()))
    tmp = Path(tempfile.mkdtemp(dir=spec["tmp"]))
    ctx = {"raw": raw, "pm": pm, "dataset_name": raw.name, "num_cases": spec["num_cases"], "cm": pm.get_configuration("3d_fullres"), "pre": DefaultPreprocessor(verbose=False),
           "repeats": spec["repeats"], "tmp": tmp,
           "regions": lm.foreground_regions if lm.has_regions else lm.foreground_labels}
    steps: dict[str, list[float]] = {}
    for name in spec["cases"]:
        _nnunet_case_steps(name, ctx, lambda step, seconds: steps.setdefault(step, []).append(seconds))
    shutil.rmtree(tmp)
    return {"median_seconds_per_case": {k: statistics.median(v) for k, v in steps.items()}, "per_case": steps}


def internal_preprocess_pirl(spec: dict) -> dict:
    """Runs under pirl's python: pirl's preprocessing alone with PIRLPlans.json's target spacing replaced."""
    import logging

    from pirl_pipeline.data.dataset_json import list_cases, load_dataset_json
    from pirl_pipeline.preprocessing.preprocessor import preprocess_dataset
    from plans.plans_manager import Plans

    logging.basicConfig(level=logging.INFO)
    raw = Path(spec["raw_folder"])
    dj = load_dataset_json(raw)
    plans = Plans.load(spec["plans_file"])
    config = plans.configuration("3d_fullres")
    config.spacing = [float(v) for v in spec["spacing"]]
    config.data_identifier = spec["data_identifier"]
    counts = preprocess_dataset(list_cases(raw, dj), plans, "3d_fullres", Path(spec["out"]), dj.label_values,
                                spec["num_processes"])
    print("pirl preprocess-only done", counts, file=sys.stderr)
    return counts


INTERNAL = {"compare": internal_compare, "preprocess_pirl": internal_preprocess_pirl, "profile_pirl": internal_profile_pirl,
            "profile_nnunet": internal_profile_nnunet}


if __name__ == "__main__":
    print(json.dumps(INTERNAL[sys.argv[1]](json.loads(sys.argv[2]))))
