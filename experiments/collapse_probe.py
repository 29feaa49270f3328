"""Does pre-training wash the subject out of z whatever the loss? (issue 23; experiments/table11/DIAGNOSTICS.md)

A PIRLNet of the seg4 budget (fs 12, 64^3, window 4, the default or the paper architecture) takes STEPS AdamW
steps (lr, weight decay 1e-5, gradient clip 12, batch 1: a random training subject of Dataset604 fold 0, its
centre patch, no augmentation) on one loss: a Table-7 term of the objective (``--loss equivariance`` ...), or
``noise``: sum(z * r) with a fresh random r every step, a loss that carries no information. Every ``--every``
steps it measures the 8 held-out Dataset601 subjects (centre patch, each modality alone), as the representation
rows do: the shared share of the deepest encoder state before its layer norm (energy of its mean over the
(subject, modality) inputs / mean energy), the between-subject std of centred z, and centred cross-modal
retrieval from z and X_h' (chance 1/8). ``--train`` limits the update to named parameter groups.

    python -m experiments.collapse_probe --work experiments/work --loss noise --steps 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from pirl_pipeline.evaluation.representation import center_patch, load_preprocessed_cases, retrieval_top1
from pirl_pipeline.file_io import load_json
from pirl_pipeline.losses.objective import TERMS, PIRLLossConfig, PIRLObjective
from pirl_pipeline.networks import PIRLNet
from pirl_pipeline.trainer_config import VARIANTS

TRAIN, HELD_OUT = "Dataset604_BraTS2018Four", "Dataset601_RealBraTS4"
CONFIGURATION = "pirl_plans_3d_fullres"
PATCH = (64, 64, 64)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.collapse_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="the experiments' work folder (preprocessed seg4 data)")
    p.add_argument("--loss", choices=[*TERMS, "noise"], default="noise")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="default")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--train", nargs="+", help="parameter-name prefixes updated (default: all), e.g. swinViT.layers4")
    p.add_argument("--seed", type=int, default=0)
    return p


def patches(work: Path, dataset: str, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    cases = load_preprocessed_cases(work / "preprocessed" / dataset / CONFIGURATION, names)
    return {name: torch.from_numpy(center_patch(np.asarray(a, np.float32), PATCH)) for name, a in cases.items()}


@torch.no_grad()
def measure(net: PIRLNet, held_out: torch.Tensor) -> dict[str, float]:
    """held_out (S, M, *patch) -> the probe's four numbers."""
    h, z, x_h = [], [], []
    for m in range(held_out.shape[1]):
        deepest = net.swinViT(net.single_modality(held_out, m), normalize=False)[4]  # before its layer norm
        z_m = net.swinViT.proj_out(deepest, normalize=True)  # z, as PIRLNet.encode takes it
        h.append(deepest.flatten(1))
        z.append(z_m.flatten(1))
        x_h.append(net.bottleneck(z_m).flatten(1))
    h, z, x_h = (torch.stack(t, 1).double() for t in (h, z, x_h))  # (S, M, D)
    shared = float(h.mean((0, 1)).pow(2).sum() / h.pow(2).sum(-1).mean())
    z = (z - z.mean((0, 1))).numpy()
    return {"shared": shared, "z_between_std": float(z.mean(1).std(0).mean()), "z_retrieval": retrieval_top1(z),
            "x_h_retrieval": retrieval_top1((x_h - x_h.mean((0, 1))).numpy())}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    split = load_json(args.work / "preprocessed" / TRAIN / "splits_final.json")[0]
    train = patches(args.work, TRAIN, split["train"])
    held_out = torch.stack(list(patches(args.work, HELD_OUT).values()))
    fixes = VARIANTS[args.variant]
    net = PIRLNet(4, 4, PATCH, 12, window_size=4, prior_attention=fixes["prior_attention"], fusion=fixes["fusion"])
    objective = None
    if args.loss != "noise":
        config = PIRLLossConfig(**{t: t == args.loss for t in TERMS}, prior=True)
        objective = PIRLObjective.for_model(net, config).train()
    trained = [p for n, p in net.named_parameters() if args.train is None or n.startswith(tuple(args.train))]
    optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=1e-5)
    print("step | shared share of the deepest state | z between-subject std | z retrieval | X_h' retrieval")
    for step in range(args.steps + 1):
        if step % args.every == 0:
            net.eval()
            print(f"{step} | " + " | ".join(f"{v:.4f}" for v in measure(net, held_out).values()), flush=True)
            net.train()
        if step == args.steps:
            break
        name = list(train)[rng.integers(len(train))]
        optimizer.zero_grad()
        if objective is None:  # a loss without information: a random direction of z every step
            z = net(net.single_modality(train[name][None], int(rng.integers(4))), decode=False, heads=False).z
            (z * torch.randn_like(z)).sum().backward()
        else:
            objective(net, train[name][None], backward=lambda loss: loss.backward(), subjects=[name])
        torch.nn.utils.clip_grad_norm_(trained, 12.0)
        optimizer.step()


if __name__ == "__main__":
    main()
