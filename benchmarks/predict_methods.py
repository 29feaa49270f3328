"""The methods ``benchmarks/predict.py`` measures (floor, pirl, tta, attention), each in a fresh interpreter,

    python -m benchmarks.predict_methods MODE SPEC_JSON      # MODE: floor, pirl, tta or attention

and prints one JSON line (wall and CPU time per phase, peak memory per phase). See ``benchmarks/predict.py``
for what each mode measures and why.
"""
from __future__ import annotations

import gc
import itertools
import json
import os
import resource
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any


class PhaseMemory(threading.Thread):
    """Samples this process's RSS every ``interval`` s; keeps the peak of each phase (``set_phase``)."""

    def __init__(self, interval: float = 0.01):
        super().__init__(daemon=True)
        self.interval, self.phase, self.peaks = interval, "start", {}
        self._page = resource.getpagesize()
        self._stop_event = threading.Event()

    def rss_mib(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page / 2**20

    def sample(self) -> None:
        rss = self.rss_mib()
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)

    def set_phase(self, phase: str) -> None:
        self.sample()  # the end of the previous phase
        self.phase = phase
        self.sample()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def stop(self) -> dict:
        self._stop_event.set()
        self.join()
        self.sample()
        return {k: round(v, 1) for k, v in self.peaks.items()}


def _setup_child(spec: dict):
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    return torch


def _sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _load(spec: dict):
    from pirl_pipeline.inference.predictor import PIRLPredictor

    return PIRLPredictor.from_model_folder(spec["model"], [spec["fold"]], device=spec["device"], mirror=False,
                                           step_size=spec["step_size"], fused_attention=spec["fused_attention"])


def _files(spec: dict) -> dict[int, Path]:
    return {int(c): Path(p) for c, p in spec["files"].items()}


def preprocessed_volume(predictor, images: dict, geometry):
    """The array ``predict_case`` hands to the sliding window: same stacking, same ``preprocess_arrays`` call."""
    import numpy as np

    from pirl_pipeline.preprocessing.preprocessor import preprocess_arrays

    available = sorted(images)
    data = np.zeros((predictor.num_modalities, *geometry.shape), np.float32)
    for c, array in images.items():
        data[c] = array
    pre, _, _ = preprocess_arrays(data, None, geometry.spacing, predictor.model.plans, predictor.config, available)
    return pre, available


def _cuda_peak(torch, device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def child_floor(spec: dict) -> dict:
    """Raw MONAI sliding window on the already-preprocessed volume, pirl's network wrapper, nothing else timed."""
    torch = _setup_child(spec)
    import numpy as np
    from monai.inferers import sliding_window_inference

    from pirl_pipeline.inference.sliding_window import window_predictor

    memory = PhaseMemory()
    memory.start()
    predictor = _load(spec)
    images, geometry = predictor.read_case(spec["case"], _files(spec))
    volume, available = preprocessed_volume(predictor, images, geometry)
    del images
    gc.collect()
    network = predictor.model.networks[0]
    predict = window_predictor(network, predictor.model.kind, available, predictor.num_modalities)
    windows = [0]

    def counted(x):
        windows[0] += x.shape[0]
        return predict(x)

    tensor = torch.from_numpy(volume)[None].to(spec["device"])
    roi = predictor.model.patch_size
    if spec["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    memory.set_phase("sliding window")
    before = memory.rss_mib()
    load0 = os.getloadavg()[0]
    with torch.no_grad():
        _sync(torch, spec["device"])
        start, cpu0 = time.perf_counter(), time.process_time()
        out = sliding_window_inference(tensor, roi, 1, counted, overlap=1 - spec["step_size"], mode="gaussian")
        _sync(torch, spec["device"])
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    memory.set_phase("after")
    peaks = memory.stop()
    if spec.get("save_logits"):
        np.save(spec["save_logits"], out[0].float().cpu().numpy())
    return {"seconds": seconds, "cpu_seconds": cpu, "windows": windows[0], "roi": list(roi),
            "preprocessed_shape": list(volume.shape), "rss_before_mib": round(before, 1),
            "peak_rss_sliding_window_mib": peaks["sliding window"],
            "peak_rss_above_start_mib": round(peaks["sliding window"] - before, 1),
            "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cuda_peak_mib": _cuda_peak(torch, spec["device"]), "load_1min": [load0, os.getloadavg()[0]],
            "torch_threads": torch.get_num_threads()}


def child_pirl(spec: dict) -> dict:
    """``pirl_predict``'s per-case work through the Python API, phase by phase."""
    torch = _setup_child(spec)
    import numpy as np

    import pirl_pipeline.inference.predictor as predictor_module

    memory = PhaseMemory()
    memory.start()
    marks: list[tuple[str, float, float]] = []  # (phase that starts now, wall, cpu)
    kept = {}

    def mark(phase: str) -> None:
        _sync(torch, spec["device"])
        marks.append((phase, time.perf_counter(), time.process_time()))
        memory.set_phase(phase)

    def wrap(fn, phase: str, after: str):
        def timed(*args, **kwargs):
            mark(phase)
            out = fn(*args, **kwargs)
            mark(after)
            if phase == "sliding window" and spec.get("save_logits"):
                kept["logits"] = out  # saved after the timed part (pirl holds it until predict_case returns)
            return out
        return timed

    predictor_module.preprocess_arrays = wrap(predictor_module.preprocess_arrays, "preprocess", "between")
    predictor_module.predict_volume = wrap(predictor_module.predict_volume, "sliding window", "restore")
    out_dir = Path(spec["output"])
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    load0 = os.getloadavg()[0]
    mark("load model")
    predictor = _load(spec)
    if spec["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    mark("read")
    images, geometry = predictor.read_case(spec["case"], _files(spec))
    mark("stack channels")
    result = predictor.predict_case(images, geometry)
    mark("export")
    written = predictor.export(spec["case"], result, geometry, out_dir, spec["file_ending"])
    mark("end")
    peaks = memory.stop()
    phases: dict[str, dict] = {}
    for (phase, t0, c0), (_, t1, c1) in itertools.pairwise(marks):
        row = phases.setdefault(phase, {"seconds": 0.0, "cpu_seconds": 0.0})
        row["seconds"] += t1 - t0
        row["cpu_seconds"] += c1 - c0
    for phase, row in phases.items():
        row["peak_rss_mib"] = peaks.get(phase)
    between = phases.pop("between")  # (~0 s) from the end of preprocessing to the window loop: count as restore
    phases["restore"]["seconds"] += between["seconds"]
    phases["restore"]["cpu_seconds"] += between["cpu_seconds"]
    order = {"load model": "load model", "read": "read", "stack channels": "stack channels",
             "preprocess": "preprocess", "sliding window": "sliding window",
             "restore": "restore (probabilities, resample back, uncrop, labels)", "export": "export"}
    phases = {label: phases[key] for key, label in order.items()}
    case_phases = [p for p in phases if p != "load model"]
    if "logits" in kept:
        np.save(spec["save_logits"], kept["logits"].float().cpu().numpy())
    return {"seconds": sum(phases[p]["seconds"] for p in case_phases),
            "cpu_seconds": sum(phases[p]["cpu_seconds"] for p in case_phases),
            "phases": phases, "peak_rss_case_mib": max(phases[p]["peak_rss_mib"] or 0 for p in case_phases),
            "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cuda_peak_mib": _cuda_peak(torch, spec["device"]), "written": [str(p) for p in written],
            "load_1min": [load0, os.getloadavg()[0]], "torch_threads": torch.get_num_threads()}


def _centred_crop(torch, spec: dict) -> tuple[Any, Any, Any, list[int], tuple[int, ...]]:
    """(model, crop tensor (C, *crop), available, crop, preprocessed shape): the case of ``spec`` preprocessed
    and cut to its centred ``spec["crop"]`` (None: the whole volume)."""
    predictor = _load(spec)
    images, geometry = predictor.read_case(spec["case"], _files(spec))
    volume, available = preprocessed_volume(predictor, images, geometry)
    del images
    shape = volume.shape[1:]
    crop = list(shape) if spec["crop"] is None else [min(c, s) for c, s in zip(spec["crop"], shape)]
    lo = [(s - c) // 2 for s, c in zip(shape, crop)]
    sub = torch.from_numpy(volume[(slice(None),) + tuple(slice(a, a + c) for a, c in zip(lo, crop))].copy())
    return predictor.model, sub, available, crop, volume.shape


def child_tta(spec: dict) -> dict:
    """``predict_volume`` without and with mirroring (8 passes) on a centred crop of the preprocessed case."""
    torch = _setup_child(spec)
    from pirl_pipeline.inference.sliding_window import predict_volume

    model, sub, available, crop, volume_shape = _centred_crop(torch, spec)
    out = {"crop": crop, "preprocessed_shape": list(volume_shape), "load_1min": [os.getloadavg()[0]]}

    def timed(mirror: bool) -> dict:
        _sync(torch, spec["device"])
        start, cpu0 = time.perf_counter(), time.process_time()
        predict_volume(model.networks, model.kind, sub, available, model.patch_size, spec["step_size"], mirror,
                       device=spec["device"])
        _sync(torch, spec["device"])
        return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu0}

    if spec["crop"] is None:  # whole volume (slow): one pass each, the first-pass set-up cost is negligible
        out["no_tta_runs"], out["tta"] = [timed(False)], timed(True)
    else:
        out["warm_up"] = timed(False)  # first pass of a process: allocator and oneDNN set-up, not counted
        runs = [timed(False), timed(True), timed(False)]  # no-TTA before and after: drift of the load cancels
        out["no_tta_runs"], out["tta"] = [runs[0], runs[2]], runs[1]
    n = len(out["no_tta_runs"])
    out["no_tta"] = {k: sum(r[k] for r in out["no_tta_runs"]) / n for k in ("seconds", "cpu_seconds")}
    out["load_1min"].append(os.getloadavg()[0])
    out["factor"] = out["tta"]["seconds"] / out["no_tta"]["seconds"]
    out["cpu_factor"] = out["tta"]["cpu_seconds"] / out["no_tta"]["cpu_seconds"]
    return out


def child_attention(spec: dict) -> dict:
    """``predict_volume`` (no TTA) on a centred crop with MONAI's explicit window attention and with the fused
    one, alternated ``spec["rounds"]`` times after a warm-up of each; same network, same weights."""
    torch = _setup_child(spec)
    from pirl_pipeline.inference.sliding_window import predict_volume
    from pirl_pipeline.networks.swinunetr_compat import set_fused_attention

    model, sub, available, crop, _ = _centred_crop(torch, spec)
    runs: dict[str, list[dict]] = {"plain": [], "fused": []}
    outputs = {}
    for rnd in range(spec["rounds"] + 1):  # round 0: warm-up of both
        for name in ("plain", "fused"):
            for network in model.networks:
                set_fused_attention(network, name == "fused")
            _sync(torch, spec["device"])
            start, cpu0 = time.perf_counter(), time.process_time()
            outputs[name] = predict_volume(model.networks, model.kind, sub, available, model.patch_size,
                                           spec["step_size"], False, device=spec["device"])
            _sync(torch, spec["device"])
            if rnd:
                runs[name].append({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu0})
    med = {n: {k: sorted(r[k] for r in rs)[len(rs) // 2] for k in ("seconds", "cpu_seconds")} for n, rs in runs.items()}
    return {"crop": crop, "runs": runs, "median": med, "gain": med["plain"]["seconds"] / med["fused"]["seconds"],
            "cpu_gain": med["plain"]["cpu_seconds"] / med["fused"]["cpu_seconds"],
            "max_abs_difference": float((outputs["plain"] - outputs["fused"]).abs().max()),
            "load_1min": [os.getloadavg()[0]], "torch_threads": torch.get_num_threads()}


CHILDREN = {"floor": child_floor, "pirl": child_pirl, "tta": child_tta, "attention": child_attention}


if __name__ == "__main__":
    mode, spec = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(CHILDREN[mode](spec)))
