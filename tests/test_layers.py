"""The layer order of the code: a module imports only from its own unit or from units in lower layers.

A unit is a sub-package or top-level module of ``pirl_pipeline`` (``pirl_pipeline.data``, ``pirl_pipeline.errors``)
or one of the top-level packages ``plans`` and ``dataset_conversion``. Function-level imports count too. A new
unit must be placed in LAYERS; an import that goes upwards (a cycle in the making) fails with the file and line.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pirl_pipeline", "plans", "dataset_conversion")

#: lowest first; one line = one layer
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("file_io",),
    ("plots",),                         # figure primitives (matplotlib): heat map, history panels, PNG writer
    ("paths", "parallel", "run_lock"),
    ("splits",),
    ("data",),                          # raw datasets, image I/O, voxel-grid geometry
    ("tasks",),                         # seg / translate: what differs between the fine-tuning tasks
    ("plans",),                         # plans schema, fingerprint, planner
    ("preprocessing",),
    ("dataloading",),                   # preprocessed cases -> augmented patch batches
    ("networks",),
    ("losses",),
    ("checkpoint", "trainer_config"),   # what a run saves: read by training, inference and evaluation alike
    ("fold_folder",),                   # the files of one trained fold (MODEL_FOLDER/fold_F): names and run identity
    ("inference",),
    ("evaluation",),
    ("training",),
    ("report",),
    ("cli",),
    ("dataset_conversion",),            # converters are command-line programs (cli.common)
    ("demo",),
]
RANK = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str | None:
    """``pirl_pipeline.training.pretrainer`` -> ``training``; ``plans.planner`` -> ``plans``; others None."""
    parts = module.split(".")
    if parts[0] == "pirl_pipeline":
        return parts[1] if len(parts) > 1 and parts[1] != "__init__" else None
    return parts[0] if parts[0] in PACKAGES else None


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def violations(sources: dict[str, str]) -> list[str]:
    """``sources``: module name -> source. One message per upward or same-layer cross-unit import."""
    problems = []
    for module, source in sorted(sources.items()):
        unit = unit_of(module)
        if unit is None:
            continue
        if unit not in RANK:
            problems.append(f"{module}: unit {unit!r} is in no layer of tests/test_layers.py LAYERS")
            continue
        for line, target in imported_modules(source):
            other = unit_of(target)
            if other is None or other == unit:
                continue
            if other not in RANK or RANK[other] >= RANK[unit]:
                problems.append(f"{module}:{line} imports {target} ({other!r} is not below {unit!r})")
    return problems


def project_sources() -> dict[str, str]:
    sources = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            sources[".".join(path.relative_to(REPO).with_suffix("").parts)] = path.read_text()
    return sources


def test_the_code_follows_the_layer_order():
    problems = violations(project_sources())
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_every_unit_has_a_layer():
    units = {unit_of(module) for module in project_sources()} - {None}
    assert units <= set(RANK), f"place these in LAYERS: {sorted(units - set(RANK))}"


def test_an_upward_import_is_reported():
    fake = {"pirl_pipeline.inference.predictor": "def f():\n    from pirl_pipeline.training.pretrainer import X\n",
            "pirl_pipeline.losses.objective": "import pirl_pipeline.networks.pirl_net\n",
            "plans.planner": "from pirl_pipeline.preprocessing.resampling import resample\n",
            "pirl_pipeline.checkpoint": "from pirl_pipeline.trainer_config import TrainerConfig\n"}
    problems = violations(fake)
    assert len(problems) == 3, problems  # the losses -> networks import is downward and allowed
    assert problems[0].startswith("pirl_pipeline.checkpoint:1 imports pirl_pipeline.trainer_config")  # same layer
    assert any("pirl_pipeline.inference.predictor:2" in p and "'training'" in p for p in problems)
    assert any(p.startswith("plans.planner:1") for p in problems)
