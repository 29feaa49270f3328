"""``make gpu-check``: pirl on one GPU in about 8 minutes, one table, ``benchmarks/results/gpu.json``.

    python -m benchmarks.gpu_check                       # on a CUDA machine (H200-class): the paper's sizes
    python -m benchmarks.gpu_check --device cpu --tiny   # the same parts at toy sizes (~3-4 min on 2 cores)
    python -m benchmarks.gpu_check --dry-run             # print the parts and their commands, run nothing

Parts, each a subprocess with its own timeout (and all of them within ``--budget`` seconds); a part that
fails or times out is recorded in the JSON with the tail of its log, and the next part runs:
1. ``environment``: torch/MONAI versions, CUDA device, bf16 support (a CPU-only torch build is reported here);
2. ``cuda tests``: ``pytest -m cuda tests/test_speed_paths.py`` (NCCL reduction, bf16 fused training step,
   batched windows blended on the device);
3. ``steps``: ``benchmarks/step.py`` at fs 48, 96³, bf16: Algorithm-1 pre-training step vs 4 plain MONAI
   SwinUNETR forward+backward passes, and a seg fine-tuning step vs one SwinUNETR pass; median time and the
   step's peak CUDA memory above the weights per method, with pirl's fused attention and with MONAI's plain one;
4. ``torchrun``: ``torchrun --nproc_per_node 1 pirl_train`` (NCCL process group, DDP, the per-epoch
   reductions) on a small generated dataset: pre-training 2 epochs, then seg fine-tuning 2 epochs from it;
5. ``predict``: one BraTS case (``../shared/data/brats2020_style/TCGA-DU-7294``) with an fs-48 model made by
   a 1-iteration training (untrained weights: timing only): pirl's ``predict_case`` without and with mirroring
   TTA, beside MONAI's ``sliding_window_inference`` with its defaults (overlap 0.25, constant blending,
   sw_batch_size 1, fp32, MONAI's attention) on the same preprocessed volume and network weights.
Work files go to ``benchmarks/results/gpu_work/`` (git-ignored).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from pirl_pipeline.fold_folder import FoldFolder
from pirl_pipeline.paths import model_folder

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CASE = REPO.parent / "shared" / "data" / "brats2020_style" / "TCGA-DU-7294"
SYNTHETIC_ID, BRATS_ID = 993, 991


class Part:
    """One timed subprocess whose outcome, never an exception, goes into the report."""

    def __init__(self, name: str, cmd: list[str], timeout: float, env: dict | None = None,
                 result_file: Path | None = None):
        self.name, self.cmd, self.timeout, self.env, self.result_file = name, cmd, timeout, env, result_file

    def run(self, logs: Path, deadline: float) -> dict:
        timeout = max(1.0, min(self.timeout, deadline - time.monotonic()))
        log = logs / f"{self.name.replace(' ', '_')}.log"
        entry: dict = {"command": " ".join(self.cmd), "timeout_s": round(timeout), "log": str(log)}
        if self.result_file is not None and self.result_file.exists():
            self.result_file.unlink()
        start = time.monotonic()
        with open(log, "w") as f:
            f.write("$ " + " ".join(self.cmd) + "\n")
            f.flush()
            try:
                proc = subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                rc = proc.wait(timeout=timeout)
                entry["status"] = "ok" if rc == 0 else f"failed (rc {rc})"
                entry["rc"] = rc
            except subprocess.TimeoutExpired:
                kill_tree(proc.pid)  # torchrun starts its workers in sessions of their own
                proc.wait()
                entry["status"], entry["rc"] = f"timed out after {timeout:.0f} s", None
            except OSError as err:
                entry["status"], entry["rc"] = f"could not start: {err}", None
        entry["seconds"] = round(time.monotonic() - start, 1)
        if entry["status"] != "ok":
            entry["log_tail"] = log.read_text(errors="replace").splitlines()[-25:]
        if self.result_file is not None and self.result_file.is_file():
            try:
                entry["results"] = json.loads(self.result_file.read_text())
            except ValueError as err:
                entry["results_error"] = str(err)
        return entry


def kill_tree(root: int) -> None:
    """SIGKILL ``root`` and every descendant (found in /proc before any is killed)."""
    tree = _bench_tree(root)
    for pid in reversed(tree):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _bench_tree(root: int) -> list[int]:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benchmarks.process_monitor import _tree

    return _tree(root)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def build_parts(args: argparse.Namespace, work: Path) -> list[Part]:
    tiny = args.tiny
    fs, patch = ("12", "64") if tiny else ("48", "96")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIRL_")}
    env |= {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    data_env = env | {"PIRL_raw": str(work / "raw"), "PIRL_preprocessed": str(work / "preprocessed"),
                      "PIRL_results": str(work / "results")}
    device = ["-device", args.device]
    parts = [Part("environment", python("-m", "benchmarks.gpu_check", "--child", "environment", str(work)), 60, env,
                  work / "environment.json")]
    parts.append(Part("cuda tests", python("-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                                           "tests/test_speed_paths.py"), 180, env))
    step_out = work / "steps.json"
    methods = ["seg"] if tiny else ["floor", "pirl", "seg_floor", "seg"]  # tiny: the cheapest PIRLNet step
    step = ["-m", "benchmarks.step", "--sizes", f"{fs}:{patch}", "--repeats", "1" if tiny else "3", "--device",
            args.device, "--methods", *methods, "--attention", "fused" if tiny else "both", "--out", str(step_out)]
    step += ["--warmup", "0"] if tiny else ["--amp"]  # memory: each step's CUDA peak in the timing child
    parts.append(Part("steps", python(*step, "--no-memory"), 240, env, step_out))
    # torchrun with ONE process: NCCL on a GPU (gloo on the CPU), DDP and the per-epoch reductions all run
    run = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "pirl_pipeline.cli.train",
           str(SYNTHETIC_ID), "3d_fullres"]
    size = ["--epochs", "2", "--iters", "1" if tiny else "4", "--val-iters", "1", "--patch-size", patch, patch, patch,
            "--feature-size", fs, "--batch-size", "1", *device]
    pretrained = FoldFolder(model_folder(f"Dataset{SYNTHETIC_ID}_GpuCheck", "PIRLPretrainer", root=work / "results"),
                            "all").checkpoint()
    synthetic = json.dumps({"work": str(work), "tiny": tiny})
    parts += [Part("synthetic dataset", python("-m", "benchmarks.gpu_check", "--child", "synthetic", synthetic), 120,
                   data_env),
              Part("torchrun pretrain", python(*run, "pretrain", *size), 150, data_env),
              Part("torchrun seg", python(*run, "seg", "-f", "0", "--pretrained", str(pretrained), *size), 150,
                   data_env)]
    spec = {"work": str(work), "device": args.device, "fs": int(fs), "roi": int(patch), "tiny": tiny}
    parts.append(Part("predict", python("-m", "benchmarks.gpu_check", "--child", "predict", json.dumps(spec)),
                      300, env, work / "predict.json"))
    return parts


# ---- children ------------------------------------------------------------------------------------------------
def child_environment(work: Path) -> None:
    import monai
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
            "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "cpus": len(os.sched_getaffinity(0))}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "bf16": torch.cuda.is_bf16_supported(), "cudnn": torch.backends.cudnn.version(),
                 "nccl": ".".join(map(str, torch.cuda.nccl.version()))}
    (work / "environment.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))


def child_synthetic(spec: dict) -> None:
    """A small generated 2-modality dataset with labels (tests/synthetic.py), planned and preprocessed; with
    ``tiny`` the plans' network has one Swin block per stage (fine-tuning inherits ``depths`` from the
    pre-trained checkpoint; it does not inherit ``window_size``, so that stays 7)."""
    from pirl_pipeline.cli.plan_and_preprocess import main as plan_main
    from tests.synthetic import write_raw_dataset

    work = Path(spec["work"])
    name = f"Dataset{SYNTHETIC_ID}_GpuCheck"
    shutil.rmtree(work / "raw" / name, ignore_errors=True)
    shutil.rmtree(work / "preprocessed" / name, ignore_errors=True)
    write_raw_dataset(work / "raw", SYNTHETIC_ID, "GpuCheck", num_cases=3, shape=(56, 60, 52),
                      channels={"0": "T1", "1": "FLAIR"})
    if plan_main(["-d", str(SYNTHETIC_ID), "-np", "2"]) != 0:
        raise SystemExit(1)
    if spec["tiny"]:
        plans_file = work / "preprocessed" / name / "PIRLPlans.json"
        plans = json.loads(plans_file.read_text())
        for config in plans["configurations"].values():
            config["network"]["depths"] = [1, 1, 1, 1]
        plans_file.write_text(json.dumps(plans, indent=2))


def _timed(torch, device: str, fn) -> tuple[object, float, float | None]:
    """(result, seconds, peak CUDA MiB of the call or None)."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**20 if cuda else None


def child_predict(spec: dict) -> None:
    """Model (1-iteration training), then pirl without/with TTA and MONAI's defaults on one case."""
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from benchmarks import predict as bench_predict
    from pirl_pipeline.inference.predictor import PIRLPredictor
    from pirl_pipeline.inference.sliding_window import window_predictor
    from pirl_pipeline.networks.swinunetr_compat import set_fused_attention
    from pirl_pipeline.preprocessing.preprocessor import preprocess_arrays

    work, device = Path(spec["work"]), spec["device"]
    report: dict = {"device": device, "fs": spec["fs"], "roi": spec["roi"]}
    if spec["tiny"]:  # the generated dataset's first case and a model trained on it for one iteration
        raw = work / "raw" / f"Dataset{SYNTHETIC_ID}_GpuCheck" / "imagesTr"
        files = {c: raw / f"case000_{c:04d}.nii.gz" for c in range(2)}
        env = {**os.environ, "PIRL_raw": str(work / "no_raw"), "PIRL_preprocessed": str(work / "preprocessed"),
               "PIRL_results": str(work / "predict_model")}
        (work / "no_raw").mkdir(exist_ok=True)  # no raw data: the trainer skips its full-volume validation
        model = model_folder(f"Dataset{SYNTHETIC_ID}_GpuCheck", "PIRLSegTrainer", root=work / "predict_model")
        if not FoldFolder(model, 0).checkpoint().is_file():
            subprocess.run(python("-m", "pirl_pipeline.cli.train", str(SYNTHETIC_ID), "3d_fullres", "seg", "-f", "0",
                                  "--epochs", "1", "--iters", "1", "--val-iters", "0", "--feature-size",
                                  str(spec["fs"]), "--patch-size", *[str(spec["roi"])] * 3, "--batch-size", "1",
                                  "-npa", "0", "-device", device, "--set", "augment=false"),
                           env=env, cwd=REPO, check=True)
        report["case"] = "generated case000 (56x60x52)"
    else:
        args = bench_predict.build_parser().parse_args(["--fs", str(spec["fs"]), "--roi", str(spec["roi"]),
                                                        "--device", device, "--workdir", str(work / "predict_work")])
        args.roi = args.roi * 3
        pwork = args.workdir.resolve()
        (pwork / "logs").mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIRL_")}
        env |= {"PIRL_raw": str(pwork / "raw"), "PIRL_preprocessed": str(pwork / "preprocessed"),
                "PIRL_results": str(pwork / "results")}
        model, report["model"] = bench_predict.prepare_model(args, pwork, env)
        files = bench_predict.case_files(CASE)
        report["case"] = CASE.name
    predictor = PIRLPredictor.from_model_folder(model, ["0"], device=device, mirror=False)
    images, geometry = predictor.read_case("case", files)
    timings = {}
    if not spec["tiny"]:
        predictor.predict_case(images, geometry)  # warm-up: CUDA context, cuDNN autotuning
    for name, mirror in (("pirl, no TTA", False), ("pirl, TTA (8 mirrorings)", True)):
        predictor.mirror = mirror
        _, seconds, peak = _timed(torch, device, lambda: predictor.predict_case(images, geometry))
        timings[name] = {"seconds": round(seconds, 2), "peak_cuda_mib": peak}
    # MONAI's defaults on the same preprocessed volume and weights: fp32, MONAI's attention, overlap 0.25
    available = sorted(images)
    data = np.zeros((predictor.num_modalities, *geometry.shape), np.float32)
    for c, array in images.items():
        data[c] = array
    pre, _, _ = preprocess_arrays(data, None, geometry.spacing, predictor.model.plans, predictor.config, available)
    network = predictor.model.networks[0]
    set_fused_attention(network, False)
    plain = window_predictor(network, predictor.model.kind, available, predictor.num_modalities)
    volume = torch.from_numpy(pre)[None].to(device)
    with torch.no_grad():
        _, seconds, peak = _timed(torch, device, lambda: sliding_window_inference(volume, predictor.model.patch_size,
                                                                                 1, plain))
    timings["MONAI sliding_window_inference, defaults"] = {"seconds": round(seconds, 2), "peak_cuda_mib": peak}
    report |= {"preprocessed_shape": list(pre.shape), "timings": timings,
               "note": "pirl: overlap 0.5, Gaussian blending, bf16 on CUDA, fused attention, batched windows; "
                       "MONAI defaults: overlap 0.25 (fewer windows), constant blending, fp32"}
    (work / "predict.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


# ---- report --------------------------------------------------------------------------------------------------
def summary_rows(parts: dict) -> list[list[str]]:
    rows = []
    for name, entry in parts.items():
        detail = ""
        results = entry.get("results") or {}
        if name == "environment" and results:
            detail = (f"torch {results.get('torch')} (CUDA {results.get('cuda_build')}), MONAI {results.get('monai')}, "
                      f"{results.get('gpu', 'no GPU')}")
        elif name == "steps" and results.get("rows"):
            row = results["rows"][0]
            bits = []
            for method in ("floor", "pirl", "seg_floor", "seg"):
                for suffix in ("", "+fused"):
                    r = row.get(method + suffix)
                    if r:
                        mem = f", +{r['step_peak_mib']:.0f} MiB" if "step_peak_mib" in r else ""
                        bits.append(f"{method}{suffix} {r['median_s']:.3f} s{mem}")
            detail = "; ".join(bits)
        elif name == "predict" and results.get("timings"):
            detail = "; ".join(f"{k} {v['seconds']:.1f} s" + (f" ({v['peak_cuda_mib']:.0f} MiB)"
                                                             if v.get("peak_cuda_mib") else "")
                               for k, v in results["timings"].items())
        rows.append([name, entry["status"], f"{entry['seconds']:.0f}", detail])
    return rows


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows + [["part", "status", "s", ""]]) for i in range(3)]
    print(f"\n{'part':<{widths[0]}}  {'status':<{widths[1]}}  {'s':>{widths[2]}}  details")
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="toy sizes (fs 12, 64³, generated case): a CPU smoke run")
    p.add_argument("--dry-run", action="store_true", help="list the parts and commands, run nothing")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for all parts together (470 on CUDA; on the CPU 1200, and part timeouts x2.5)")
    p.add_argument("--only", nargs="+", help="run only these parts (names as in the table)")
    p.add_argument("--workdir", type=Path, default=RESULTS / "gpu_work")
    p.add_argument("--json-out", type=Path, default=RESULTS / "gpu.json")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        mode, arg = args.child
        {"environment": lambda: child_environment(Path(arg)), "synthetic": lambda: child_synthetic(json.loads(arg)),
         "predict": lambda: child_predict(json.loads(arg))}[mode]()
        return 0
    work = args.workdir.resolve()
    parts = build_parts(args, work)
    cpu = args.device == "cpu"
    args.budget = args.budget or (1200 if cpu else 470)
    for part in parts:
        part.timeout *= 2.5 if cpu else 1
    if args.only:
        parts = [part for part in parts if part.name in args.only]
    if args.dry_run:
        for part in parts:
            print(f"{part.name} (timeout {part.timeout:.0f} s): {' '.join(part.cmd)}")
        return 0
    (work / "logs").mkdir(parents=True, exist_ok=True)
    start, deadline = time.monotonic(), time.monotonic() + args.budget
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": args.device, "tiny": args.tiny,
              "budget_s": args.budget, "host": platform.node(), "parts": {}}
    for part in parts:
        if time.monotonic() >= deadline:
            report["parts"][part.name] = {"status": "skipped (budget spent)", "seconds": 0.0}
            continue
        print(f"--- {part.name}", flush=True)
        report["parts"][part.name] = part.run(work / "logs", deadline)
        print(f"    {report['parts'][part.name]['status']} in {report['parts'][part.name]['seconds']} s", flush=True)
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")  # after every part: a crash keeps the rest
    report["seconds"] = round(time.monotonic() - start, 1)
    args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(summary_rows(report["parts"]))
    print(f"\n{report['seconds']:.0f} s in all; JSON: {args.json_out}")
    return 0 if all(e["status"] == "ok" for e in report["parts"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
