"""One owner per fold folder: ``pirl_pipeline/fold_folder.py`` knows ``MODEL_FOLDER/fold_F`` and the names of the
files in it; every other module asks a FoldFolder. The names are checked here against the on-disk contract (what
older runs wrote and installed models hold), and the code is scanned for a fold path or file name spelled anywhere
else (tests may spell them: they check the contract)."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.fold_folder import (
    BEST,
    LATEST,
    FoldFolder,
    segmentation_matrix_name,
    translation_matrix_name,
)
from pirl_pipeline.paths import model_folder
from pirl_pipeline.tasks import SEG, TRANSLATE
from pirl_pipeline.trainer_config import TrainerConfig

REPO = Path(__file__).resolve().parents[1]
OWNER = REPO / "pirl_pipeline" / "fold_folder.py"
SCANNED = ("pirl_pipeline", "experiments", "benchmarks", "plans", "dataset_conversion")
#: a string literal without spaces (a path, not prose) that builds a fold path or names a file of a fold
FOLD_LITERAL = re.compile(r"(?:^|/)(?:fold_|missing_modalities_|(?:checkpoint_(?:final|latest|best)\.pth|training_log\.txt"
                          r"|progress\.png|postprocessing\.json|config\.json|validation/summary\.json|per_case\.csv"
                          r"|translation_(?:psnr|ssim)(?:\.csv)?)$)")


def test_the_paths_are_the_on_disk_layout(tmp_path):
    model = model_folder("Dataset001_X", "PIRLSegTrainer", root=tmp_path)
    fold = FoldFolder(model, 0)
    here = tmp_path / "Dataset001_X" / "PIRLSegTrainer__PIRLPlans__3d_fullres" / "fold_0"
    assert (fold.fold, fold.name, fold.path) == ("0", "fold_0", here)
    assert FoldFolder(model, "all").path == here.with_name("fold_all")
    assert (fold.checkpoint(), fold.checkpoint(LATEST), fold.checkpoint(BEST)) == (
        here / "checkpoint_final.pth", here / "checkpoint_latest.pth", here / "checkpoint_best.pth")
    assert (fold.config, fold.training_log, fold.progress_plot, fold.postprocessing) == (
        here / "config.json", here / "training_log.txt", here / "progress.png", here / "postprocessing.json")
    assert (fold.validation, fold.validation_summary) == (here / "validation", here / "validation" / "summary.json")
    assert fold.matrix(SEG, segmentation_matrix_name("dice")) == here / "missing_modalities" / \
        "missing_modalities_dice.csv"
    assert segmentation_matrix_name("hd95", completed=True) == "missing_modalities_hd95_completed"
    assert fold.matrix(TRANSLATE, translation_matrix_name("PSNR")) == here / "translation_matrix" / \
        "translation_psnr.csv"
    assert fold.subsets_summary(TRANSLATE) == here / "translation_matrix" / "summary.json"
    assert [p.relative_to(here).as_posix() for p in fold.records()] == [
        "config.json", "training_log.txt", "progress.png", "validation/summary.json", "postprocessing.json"]
    assert fold.identity == ("PIRLSegTrainer", "PIRLPlans", "3d_fullres")
    assert FoldFolder(tmp_path / "elsewhere", 0).identity is None


def test_a_fold_that_is_not_a_name_is_refused(tmp_path):
    with pytest.raises(PirlInputError, match="not a fold"):
        FoldFolder(tmp_path, "0/../1")


def test_folds_lists_fold_folders_in_fold_order_and_filters_on_a_file(tmp_path):
    for name in ("fold_10", "fold_2", "fold_all", "fold_0", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "fold_3").write_text("a file, not a fold")
    for fold in ("2", "all"):
        (tmp_path / f"fold_{fold}" / "validation").mkdir()
        (tmp_path / f"fold_{fold}" / "validation" / "summary.json").write_text("{}")
    (tmp_path / "fold_10" / "checkpoint_final.pth").write_bytes(b"")
    assert [f.fold for f in FoldFolder.folds(tmp_path)] == ["0", "2", "10", "all"]
    assert [f.fold for f in FoldFolder.folds(tmp_path, require="validation/summary.json")] == ["2", "all"]
    assert [f.fold for f in FoldFolder.folds(tmp_path, require="checkpoint_final.pth")] == ["10"]
    assert FoldFolder(tmp_path, 10).checkpoints() == [tmp_path / "fold_10" / "checkpoint_final.pth"]
    assert FoldFolder.folds(tmp_path / "missing") == []


def test_the_task_is_what_the_run_recorded(tmp_path):
    fold = FoldFolder(tmp_path / "Renamed__P__C", 0)  # any folder name: the task comes from config.json
    assert fold.task() is None and fold.read_config() is None
    fold.path.mkdir(parents=True)
    fold.config.write_text(json.dumps(TrainerConfig(task="translate").to_dict()))
    assert fold.task() == "translate" and fold.read_config().task == "translate"
    fold.config.write_text("{not json")
    with pytest.raises(PirlInputError, match=re.escape(str(fold.config))):
        fold.task()


def fold_literals(source: str) -> list[tuple[int, str]]:
    """(line, value) of each string literal in ``source`` that spells a fold path or a fold file name; prose
    (literals with spaces) and docstrings are not code that builds paths."""
    tree = ast.parse(source)
    docs = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
            and not re.search(r"\s", node.value) and FOLD_LITERAL.search(node.value)]


def test_no_module_but_fold_folder_spells_a_fold_path_or_file_name():
    found = [f"{path.relative_to(REPO)}:{line}: {value!r}"
             for package in SCANNED for path in sorted((REPO / package).rglob("*.py")) if path != OWNER
             for line, value in fold_literals(path.read_text())]
    assert not found, "use pirl_pipeline.fold_folder (FoldFolder and its names) instead of:\n" + "\n".join(found)


def test_the_scan_finds_what_it_is_for():
    bad = '''"""Docstrings may name checkpoint_final.pth."""
folder = model / f"fold_{fold}" / "checkpoint_latest.pth"
folds = [p.name[len("fold_"):] for p in model.glob("fold_*/config.json")]
summary = fold / "validation/summary.json"
name = f"missing_modalities_{key}"
matrices = {"translation_psnr": psnr, "plot": "table10_translation_psnr.png"}
help = "fold_F/postprocessing.json: prose with spaces is fine"
'''
    assert sorted(line for line, _ in fold_literals(bad)) == [2, 2, 3, 3, 4, 5, 6]
