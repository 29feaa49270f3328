"""Time and peak memory of one Algorithm-1 step vs the floor: 4 forward+backward passes of a plain SwinUNETR.

    python benchmarks/step.py                          # fs 12 and 24 at 64^3 on the CPU
    python benchmarks/step.py --sizes 12:96 --repeats 2
    python benchmarks/step.py --device cuda --amp --sizes 48:96

Both methods take one AdamW step per repetition on a batch of subjects with 4 modalities: the floor runs
4 forward+backward passes of SwinUNETR(4 -> 4 channels); PIRL runs PIRLObjective (all losses, 2 views).
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
from pirl_pipeline.networks import PIRLNet

MODALITIES = 4
METHODS = ("floor", "pirl")


def _rss_mib() -> float:
    """Current resident set size of this process in MiB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def build(method: str, args: argparse.Namespace) -> Callable[[], None]:
    """A closure running one optimizer step of ``method`` on fixed random data."""
    device = torch.device(args.device)
    patch = (args.patch,) * 3
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.amp else nullcontext()
    torch.manual_seed(0)
    images = torch.randn(args.batch, MODALITIES, *patch, device=device)
    if method == "floor":
        model = SwinUNETR(MODALITIES, MODALITIES, feature_size=args.fs).to(device)

        def passes() -> None:
            for _ in range(MODALITIES):
                with autocast:
                    loss = F.mse_loss(model(images).float(), images)
                loss.backward()
    else:
        model = PIRLNet(MODALITIES, MODALITIES, patch, feature_size=args.fs).to(device)
        config = PIRLLossConfig(contrastive=args.views > 0, views=max(args.views, 1), view_grad=args.view_grad)
        objective = PIRLObjective.for_model(model, config)
        objective.to(device)
        mask = (images[:, :1] > -1).float()

        def passes() -> None:
            with autocast:
                objective(model, images, mask, backward=lambda loss: loss.backward())

    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        passes()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def child_time(args: argparse.Namespace) -> dict:
    steps = {m: build(m, args) for m in METHODS}
    times: dict[str, dict[str, list[float]]] = {m: {"times_s": [], "cpu_times_s": []} for m in METHODS}
    for i in range(1 + args.repeats):
        for method, step in steps.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            if i:  # the first round is the warm-up
                times[method]["times_s"].append(time.perf_counter() - start)
                times[method]["cpu_times_s"].append(time.process_time() - cpu_start)
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
           "--threads", str(args.threads)]  # fmt: skip
    cmd += ["--amp"] * args.amp + ["--view-grad"] * args.view_grad
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(args: argparse.Namespace, fs: int, patch: int) -> dict:
    times = run_child(args, "time", fs, patch)
    row: dict = {"feature_size": fs, "patch": patch}
    for method in METHODS:
        row[method] = times[method] | {
            "median_s": statistics.median(times[method]["times_s"]),
            "median_cpu_s": statistics.median(times[method]["cpu_times_s"]),
        }
        row[method] |= run_child(args, f"memory-{method}", fs, patch)
    row["time_ratio"] = row["pirl"]["median_s"] / row["floor"]["median_s"]
    row["cpu_time_ratio"] = row["pirl"]["median_cpu_s"] / row["floor"]["median_cpu_s"]
    row["memory_ratio"] = row["pirl"]["peak_mib"] / row["floor"]["peak_mib"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["12:64", "24:64"], help="feature_size:patch pairs")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per method (after 1 warm-up)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--views", type=int, default=2, help="augmented views per modality (Algorithm 1: 2; 0: no L_contr)"
    )
    parser.add_argument("--view-grad", action="store_true", help="back-propagate through the views too")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
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
    header = (f"{'fs':>3} {'patch':>5} | {'floor s':>8} {'PIRL s':>8} {'ratio':>6} | {'CPU ratio':>9} | "
              f"{'floor MiB':>9} {'PIRL MiB':>9} {'ratio':>6} | {'floor +MiB':>10} {'PIRL +MiB':>9}")  # fmt: skip
    print(header + "\n" + "-" * len(header), flush=True)
    rows = []
    for size in args.sizes:
        fs, patch = (int(v) for v in size.split(":"))
        row = measure(args, fs, patch)
        rows.append(row)
        floor, pirl = row["floor"], row["pirl"]
        print(f"{fs:>3} {patch:>4}³ | {floor['median_s']:>8.2f} {pirl['median_s']:>8.2f} {row['time_ratio']:>6.2f} | "
              f"{row['cpu_time_ratio']:>9.2f} | {floor['peak_mib']:>9.0f} {pirl['peak_mib']:>9.0f} "
              f"{row['memory_ratio']:>6.2f} | {floor['step_mib']:>10.0f} {pirl['step_mib']:>9.0f}",
              flush=True)  # fmt: skip
    settings = {k: v for k, v in vars(args).items() if k not in ("child", "fs", "patch", "out")}
    settings["torch_threads"] = torch.get_num_threads()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
