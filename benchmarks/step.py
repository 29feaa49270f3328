"""Time and peak memory of one Algorithm-1 step vs the floor: 4 forward+backward passes of a plain SwinUNETR.

    python benchmarks/step.py                          # fs 12 and 24 at 64^3 on the CPU
    python benchmarks/step.py --sizes 12:96 --repeats 2
    python benchmarks/step.py --device cuda --amp --sizes 48:96
    python benchmarks/step.py --attention both         # each method with MONAI's and with the fused attention
    python benchmarks/step.py --methods seg_floor seg  # a fine-tuning (Algorithm 2) step vs one SwinUNETR pass
    python benchmarks/step.py --window 4 --out benchmarks/results/step_window4.json   # the Swin window (7)

Both methods take one AdamW step per repetition on a batch of subjects with 4 modalities: the floor runs
4 forward+backward passes of SwinUNETR(4 -> 4 channels); PIRL runs PIRLObjective (all losses, 2 views).
``seg`` is a fine-tuning step of PIRLNet (4 -> 3 classes, each modality encoded alone, X_h' fused, Dice+CE
and L_inv), ``seg_floor`` one forward+backward pass of SwinUNETR(4 -> 3) with the same loss. ``--attention
fused`` switches the Swin window attention to ``scaled_dot_product_attention`` (``set_fused_attention``)
for every method; ``both`` measures each method both ways (``METHOD+fused``).
Time: one child process builds both models and alternates their steps (after one warm-up step each), so
that a changing machine load hits both alike; the median wall time is reported, and the ratio of the
median process CPU times (robust to other load, most so with --threads 1). Memory: one fresh child per method
(one step): the peak resident set (ru_maxrss) on the CPU, torch.cuda.max_memory_allocated on CUDA;
"+MiB" is the part of the peak above what the process held before the step (model, data).
Results: a table on stdout and JSON in benchmarks/results/step.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.networks.nets import SwinUNETR

from pirl_pipeline.losses import PIRLLossConfig, PIRLObjective
from pirl_pipeline.losses.invariance import InvarianceLoss
from pirl_pipeline.losses.segmentation import SegmentationLoss
from pirl_pipeline.networks import PIRLNet
from pirl_pipeline.networks.swinunetr_compat import set_fused_attention

MODALITIES = 4
METHODS = ("floor", "pirl", "seg_floor", "seg")
RATIOS = {"pirl": "floor", "seg": "seg_floor"}  # method -> its floor


def methods_of(args: argparse.Namespace) -> list[str]:
    """The measured methods: ``--methods`` with ``+fused`` variants per ``--attention``."""
    suffixes = {"plain": [""], "fused": ["+fused"], "both": ["", "+fused"]}[args.attention]
    return [m + s for m in args.methods for s in suffixes]


def _rss_mib() -> float:
    """Current resident set size of this process in MiB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def build(method: str, args: argparse.Namespace) -> Callable[[], None]:
    """A closure running one optimizer step of ``method`` (``NAME`` or ``NAME+fused``) on fixed random data."""
    device = torch.device(args.device)
    patch = (args.patch,) * 3
    method, _, fused = method.partition("+")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else nullcontext()

    torch.manual_seed(0)
    images = torch.randn(args.batch, MODALITIES, *patch, device=device)
    labels = torch.randint(0, 3, (args.batch, 1, *patch), device=device)
    if method in ("floor", "seg_floor"):
        model = SwinUNETR(MODALITIES, MODALITIES if method == "floor" else 3, feature_size=args.fs,
                          window_size=args.window).to(device)
    else:
        model = PIRLNet(MODALITIES, MODALITIES if method == "pirl" else 3, patch, feature_size=args.fs,
                        window_size=args.window).to(device)
    set_fused_attention(model, bool(fused))
    if method == "floor":

        def passes() -> None:
            for _ in range(MODALITIES):
                with autocast():
                    loss = F.mse_loss(model(images).float(), images)
                loss.backward()
    elif method == "pirl":
        config = PIRLLossConfig(contrastive=args.views > 0, views=max(args.views, 1), view_grad=args.view_grad)
        objective = PIRLObjective.for_model(model, config)
        objective.to(device)
        mask = (images[:, :1] > -1).float()

        def passes() -> None:
            objective(model, images, mask, backward=lambda loss: loss.backward(), autocast=autocast)
    else:
        seg_loss, inv_loss = SegmentationLoss().to(device), InvarianceLoss()
        available = torch.ones(args.batch, MODALITIES, dtype=torch.bool)  # every modality: the most work

        def passes() -> None:
            with autocast():
                if method == "seg":
                    out = model(images, available=available, fuse=True, heads=False)
                    loss = seg_loss(out.output.float(), labels) + inv_loss.across_modalities(out.x_h_modalities,
                                                                                             out.owner)
                else:
                    loss = seg_loss(model(images).float(), labels)
            loss.backward()

    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        passes()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def child_time(args: argparse.Namespace) -> dict:
    steps = {m: build(m, args) for m in methods_of(args)}
    times: dict[str, dict[str, list[float]]] = {m: {"times_s": [], "cpu_times_s": []} for m in steps}
    cuda = args.device.startswith("cuda")
    for i in range(args.warmup + args.repeats):
        for method, step in steps.items():
            if cuda:  # the step's own peak above what all the models and optimisers hold
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            if i >= args.warmup:  # the first rounds are the warm-up
                times[method]["times_s"].append(time.perf_counter() - start)
                times[method]["cpu_times_s"].append(time.process_time() - cpu_start)
                if cuda:
                    times[method]["step_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return times


def child_memory(args: argparse.Namespace, method: str) -> dict:
    step = build(method, args)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**20 if cuda else _rss_mib()
    step()
    peak = (
        torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {"peak_mib": peak, "step_mib": peak - base}


def run_child(args: argparse.Namespace, mode: str, fs: int, patch: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--fs", str(fs), "--patch", str(patch), "--device", args.device,
           "--batch", str(args.batch), "--repeats", str(args.repeats), "--views", str(args.views),
           "--threads", str(args.threads), "--attention", args.attention, "--warmup", str(args.warmup),
           "--window", str(args.window),
           "--methods", *args.methods]  # fmt: skip
    cmd += ["--amp"] * args.amp + ["--view-grad"] * args.view_grad
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(args: argparse.Namespace, fs: int, patch: int) -> dict:
    times = run_child(args, "time", fs, patch)
    row: dict = {"feature_size": fs, "patch": patch}
    for method in methods_of(args):
        row[method] = times[method] | {
            "median_s": statistics.median(times[method]["times_s"]),
            "median_cpu_s": statistics.median(times[method]["cpu_times_s"]),
        }
        if not args.no_memory:
            row[method] |= run_child(args, f"memory-{method}", fs, patch)
    for method, floor in RATIOS.items():  # PIRL / its floor, and fused / plain attention
        for suffix in ("", "+fused"):
            a, b = row.get(method + suffix), row.get(floor + suffix)
            if a and b:
                key = "" if method == "pirl" else f"{method}_"
                key += "" if not suffix else "fused_"
                row[f"{key}time_ratio"] = a["median_s"] / b["median_s"]
                row[f"{key}cpu_time_ratio"] = a["median_cpu_s"] / b["median_cpu_s"]
                if "peak_mib" in a and "peak_mib" in b:
                    row[f"{key}memory_ratio"] = a["peak_mib"] / b["peak_mib"]
    for method in args.methods:
        plain, fused = row.get(method), row.get(method + "+fused")
        if plain and fused:
            row[f"fused_gain_{method}"] = plain["median_s"] / fused["median_s"]
            row[f"fused_cpu_gain_{method}"] = plain["median_cpu_s"] / fused["median_cpu_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["12:64", "24:64"], help="feature_size:patch pairs")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per method (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method first (1)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--views", type=int, default=2, help="augmented views per modality (Algorithm 1: 2; 0: no L_contr)"
    )
    parser.add_argument("--view-grad", action="store_true", help="back-propagate through the views too")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["floor", "pirl"],
                        help="floor pirl (Algorithm 1, default) and/or seg_floor seg (a fine-tuning step)")
    parser.add_argument("--attention", choices=["plain", "fused", "both"], default="plain",
                        help="Swin window attention: MONAI's (plain), scaled_dot_product_attention (fused), both")
    parser.add_argument("--window", type=int, default=7, help="Swin attention window in tokens (the paper's 7)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-method memory children")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "step.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--fs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--patch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        result = child_time(args) if args.child == "time" else child_memory(args, args.child.split("-", 1)[1])
        print(json.dumps(result))
        return
    header = (f"{'fs':>3} {'patch':>5} {'method':<16} | {'median s':>9} {'CPU s':>8} | {'peak MiB':>9} "
              f"{'+MiB':>7}")
    print(header + "\n" + "-" * len(header), flush=True)
    rows = []
    for size in args.sizes:
        fs, patch = (int(v) for v in size.split(":"))
        row = measure(args, fs, patch)
        rows.append(row)
        for method in methods_of(args):
            r = row[method]
            print(f"{fs:>3} {patch:>4}³ {method:<16} | {r['median_s']:>9.2f} {r['median_cpu_s']:>8.2f} | "
                  f"{r.get('peak_mib', float('nan')):>9.0f} {r.get('step_mib', float('nan')):>7.0f}", flush=True)
        ratios = {k: round(v, 3) for k, v in row.items() if k.endswith(("ratio", "gain")) or "_gain_" in k}
        print("    " + ", ".join(f"{k} {v}" for k, v in ratios.items()), flush=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("child", "fs", "patch", "out")}
    settings["torch_threads"] = torch.get_num_threads()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
