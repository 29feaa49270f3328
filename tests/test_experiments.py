"""experiments/: budget and models, splits, the stage plan, tables and RESULTS.md, real-data preparation."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from experiments import data
from experiments.config import COMPARISON, FULL, QUICK, ablation_model, table7_terms
from experiments.curves import finetune_curves_section
from experiments.records import has_run, run_meta, save_records
from experiments.report import segmentation_verdicts, settings_run, write_report
from experiments.run import Experiment, prepare_data
from experiments.stages import StageRunner, plan_table
from experiments.tables import load_per_case
from pirl_pipeline.data.dataset_json import load_dataset_json
from pirl_pipeline.demo import FINETUNE_SET
from pirl_pipeline.file_io import load_json, save_json
from pirl_pipeline.losses.objective import TABLE7

MODALITIES = ("T1", "T1ce", "T2", "FLAIR")


def test_ablation_rows_switch_off_exactly_the_terms_table7_lacks():
    for row in range(1, 6):
        model = ablation_model(row)
        assert set(model.disabled) == {t for t, on in TABLE7[row].items() if not on}
        assert model.trainer("translate") == "PIRLTranslateTrainer"
    assert table7_terms(6) == "+ Contrastive + Decomposition + Equivariance + Invariance + O"


def test_equal_total_steps_baseline_gets_the_pretraining_steps():
    long = next(m for m in COMPARISON if m.equal_total_steps)
    plain = next(m for m in COMPARISON if m.key == "swin_scratch")
    for task in ("seg", "translate"):
        assert long.steps(FULL, task) == FULL.pretrain_steps + FULL.finetune_steps(task)
        assert plain.steps(FULL, task) == FULL.finetune_steps(task)
        assert long.iters_per_epoch(FULL, task) * FULL.epochs == long.steps(FULL, task)
    assert long.seeds(FULL) == FULL.seeds[:1] and plain.seeds(FULL) == FULL.seeds


def test_splits_test_every_case_and_never_train_on_it():
    cases = [c for pair in data.TRANSLATION_VAL_PAIRS for c in pair]
    folds = data.translation_splits(cases[::-1])
    assert [s["val"] for s in folds] == [list(p) for p in data.TRANSLATION_VAL_PAIRS]
    assert all(set(s["train"]) == set(cases) - set(s["val"]) and len(s["train"]) == 6 for s in folds)
    two = data.segmentation_splits(["p3", "p4", "p5", "p6"])
    assert two == [{"train": ["p3", "p4"], "val": ["p5", "p6"]}, {"train": ["p5", "p6"], "val": ["p3", "p4"]}]
    three = data.segmentation_splits([f"c{i}" for i in range(6)], 3)
    assert sorted(c for s in three for c in s["val"]) == [f"c{i}" for i in range(6)]
    assert all(len(s["train"]) == 4 and not set(s["train"]) & set(s["val"]) for s in three)


def test_stage_plan_pretrains_once_per_seed_and_passes_the_budget(tmp_path):
    experiment = Experiment(FULL, tmp_path)
    experiment.plan(["translation", "seg", "seg2", "ablation", "representation"])
    names = [s[0] for s in experiment.stages]
    assert len(names) == len(set(names))
    pretrains = [s for s in experiment.stages if s[0].startswith("pretrain")]
    folds = len(FULL.translation_folds) + len(FULL.seg_folds) + len(FULL.seg2_folds)
    # one full pre-training per (part, fold, seed) and one per ablation row (first seed)
    assert len(pretrains) == folds * len(FULL.seeds) + len(FULL.ablation_rows)
    row1 = next(s for s in pretrains if "ablation_row1" in s[0])[3]
    assert row1[row1.index("--disable") + 1:] == ["invariance", "prior"]
    long = next(s for s in experiment.stages if s[0] == "train swin_scratch_long translation fold0")[3]
    steps = FULL.pretrain_steps + FULL.finetune_steps("translate")
    assert long[long.index("--iters") + 1] == str(steps // FULL.epochs)
    assert not any(s[0].startswith("train swin_scratch_long_seed") for s in experiment.stages)
    pirl = next(s for s in experiment.stages if s[0] == "train pirl_seed2 seg fold1")[3]
    pretrained = pirl[pirl.index("--pretrained") + 1]
    assert "fold_1" in pretrained and "/pirl_seed2/" in pretrained and "seed=2" in pirl
    # fine-tuning runs the demo's settings for its task, after the budget's --set fields (so they win)
    assert pirl[pirl.index("--lr") + 1] == "0.001" and pirl[pirl.index("--window-size") + 1] == str(FULL.window_size)
    sets = pirl[pirl.index("--set") + 1:pirl.index("--pretrained")]
    assert sets[:2] == ["seed=2", "lr_schedule=constant"] and sets[2:] == [*FINETUNE_SET["seg"], "variant=default"]
    pre = next(s for s in pretrains if s[0] == "pretrain pirl_seed2 seg fold1")[3]
    assert "--lr" not in pre and pre[pre.index("--window-size") + 1] == str(FULL.window_size)
    assert sum(s[0].startswith("references") for s in experiment.stages) == folds
    assert names[-1] == "representation"


def test_settings_run_reads_the_recorded_commands(tmp_path):
    base = "python -m pirl_pipeline.cli.train D 3d_fullres seg --iters 20 --epochs 10"
    save_json({"train pirl seg fold0": {"seconds": 1, "command": base + " --set seed=1 lr_schedule=constant"},
               "train pirl_seed2 seg fold0": {"seconds": 1, "command": base + " --window-size 4 --lr 0.001 --set "
                                              "seed=2 lr_schedule=constant lr_schedule=poly --pretrained X"},
               "train dynunet_scratch seg fold0": {"seconds": 1, "command": base + " -tr DynUNetSegTrainer --set "
                                                   "seed=1 lr_schedule=constant"},
               "evaluate pirl seg fold0": {"seconds": 1, "command": "python -m x -d D"}}, tmp_path / "timings.json")
    assert settings_run(tmp_path) == ("train seg: 200 steps, lr 0.001, window 4, lr_schedule=poly / "
                                      "200 steps, lr 2e-4, no window (DynUNet), lr_schedule=constant / "
                                      "200 steps, lr 2e-4, window 7, lr_schedule=constant")


def _fake_translation(work, key, fold, case, offset):
    rows = [{"source": s, "target": t, "case": case, "PSNR": 20 + offset + i, "NMSE": 0.1 - offset / 100,
             "SSIM": 0.5 + offset / 10}
            for i, (s, t) in enumerate(itertools.permutations(MODALITIES, 2))]
    out = work / "eval" / key / f"translation_fold{fold}"
    out.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(out / "per_case.csv", index=False)


def _fake_segmentation(work, key, fold, cases, dice):
    rows = []
    for subset, case in itertools.product(("FLAIR", "T1c", "FLAIR+T1c"), cases):
        row = {"subset": subset, "case": case}
        for region in ("whole tumour", "tumour core", "enhancing tumour"):
            row.update({f"Dice/{region}": dice, f"TPR/{region}": dice, f"TNR/{region}": 1.0,
                        f"FNR/{region}": 1 - dice, f"FPR/{region}": 0.0, "Dice/necrosis": 0.0})
        rows.append(row)
    out = work / "eval" / key / f"seg_fold{fold}"
    out.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(out / "per_case.csv", index=False)


def test_report_tables_and_verdicts_come_from_the_numbers(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    _fake_translation(work, "pirl", 0, "caseA", offset=1.0)  # PIRL better than scratch everywhere
    _fake_translation(work, "swin_scratch", 0, "caseA", offset=0.0)
    _fake_translation(work, "pirl_seed2", 0, "caseA", offset=3.0)  # a second seed, 2 dB better
    _fake_translation(work, "reference_identity", 0, "caseA", offset=1.5)  # copying the source beats PIRL
    _fake_translation(work, "ablation_row4", 0, "caseA", offset=2.0)  # an ablation beats the full objective
    _fake_segmentation(work, "pirl", 0, ["p5", "p6"], dice=0.4)
    _fake_segmentation(work, "swin_scratch", 0, ["p5", "p6"], dice=0.6)  # scratch wins segmentation
    _fake_segmentation(work, "reference_threshold", 0, ["p5", "p6"], dice=0.5)
    save_json({"train pirl": {"seconds": 120.0, "command": "x", "results": "pirl"}}, work / "timings.json")
    report = write_report(work, out, QUICK, quick=False).read_text()
    # PIRL's mean over its two seeds (offsets 1 and 3) is 2: it beats copying the source (1.5) and scratch (0)
    assert "beats **SwinUNETR from scratch** on PSNR 12/12, NMSE 12/12, SSIM 12/12 pairs" in report
    assert "beats **(reference) copy the source modality** on PSNR 12/12" in report
    assert "SwinUNETR from scratch beats **(reference) copy the source modality** on PSNR 0/12" in report
    assert ("FLAIR+T1c: PIRL 0.400 vs best other model (SwinUNETR from scratch) 0.600: one seed, so no seed spread "
            "to judge it: not evidence (-0.200)" in report)
    assert ("FLAIR+T1c: best reference (reference) intensity threshold fitted on the training cases 0.500; "
            "beaten (by > 0.005) by: SwinUNETR from scratch 0.600; not by: PIRL pre-train -> fine-tune 0.400.") in report
    assert "SSIM: of the other 1 rows, 1 beat the full objective (row 6) by more than 0.001, 0 tie" in report
    table10 = pd.read_csv(out / "results" / "translation_summary.csv", index_col=0)
    assert np.isclose(table10.loc["PIRL pre-train -> fine-tune", "PSNR mean"], 22 + 5.5)
    assert np.isclose(table10.loc["PIRL pre-train -> fine-tune", "PSNR seed spread"], 2.0)
    assert table10.loc["PIRL pre-train -> fine-tune", "seeds"] == 2
    table8 = pd.read_csv(out / "results" / "table8_seg.csv", header=[0, 1], index_col=[0, 1])
    assert np.isclose(table8.loc[("T1c", "SwinUNETR from scratch"), ("mean over regions", "FNR")], 0.4)
    for png in ("table10_translation_psnr.png", "table8_seg_dice.png", "table7_ablation_ssim.png"):
        assert (out / "results" / png).stat().st_size > 1000
    assert "| **total** | **2.0** |" in report


def test_finetune_curves_average_folds_and_seeds_per_epoch(tmp_path):
    layout = Experiment(FULL, tmp_path)
    for run, fold, values in (("pirl", 0, [0.5, 0.6, 0.7, 0.9]), ("pirl_seed2", 1, [0.3, 0.4, 0.5, 0.7]),
                              ("swin_scratch", 0, [0.6, 0.6, 0.6, 0.5])):
        trainer = "SwinUNETRSegTrainer" if run.startswith("swin") else "PIRLSegTrainer"
        folder = layout.fold_folder(run, "seg", trainer, fold).path
        folder.mkdir(parents=True)
        history = [{"epoch": e, "val/volume_dice_label_1": 0.0, "val/volume_dice_whole_tumour": v}
                   for e, v in enumerate(values)]
        torch.save({"config": {"iters_per_epoch": 5}, "history": history}, folder / "checkpoint_final.pth")
    lines = finetune_curves_section(tmp_path, "seg")
    assert "| PIRL pre-train -> fine-tune | 0.400 | 0.500 | 0.600 | 0.800 | 20 | 2 |" in "\n".join(lines)
    assert ("- PIRL pre-train -> fine-tune: 0.400 after epoch 1, 0.500 after epoch 2, 0.800 after epoch 4 of 20 "
            "steps (+0.300 over the second half).") in lines
    assert any(line.startswith("- SwinUNETR from scratch: 0.600 after epoch 1") and "(-0.100 " in line
               for line in lines)
    assert finetune_curves_section(tmp_path, "seg2") == []


def test_report_without_results_says_not_run(tmp_path):
    report = write_report(tmp_path / "work", tmp_path, QUICK, quick=True).read_text()
    assert report.count("Not run yet.") == 9 and "QUICK smoke test" in report  # seven BraTS parts, two PET/CT
    data_lines = [line for line in report.splitlines() if line.startswith("- Data ")]
    assert [line.split(": ", 1)[1][:10] for line in data_lines] == [f"Dataset60{i}" for i in range(1, 6)]
    assert data.describe_datasets(["ablation"]) == data.describe_datasets(["translation"])  # the same data
    assert len(data.describe_datasets(["representation"])) == 5 and data.describe_datasets([]) == []
    petct = write_report(tmp_path / "work", tmp_path, QUICK, quick=True, parts=["petct"]).read_text()
    assert [line for line in petct.splitlines() if line.startswith("- Data ")] == [data_lines[-1]]
    assert "(PET/CT: the planner's own)" in petct and "(PET/CT" not in write_report(
        tmp_path / "work", tmp_path, QUICK, quick=True, parts=["seg"]).read_text()


@pytest.mark.shared_data
def test_real_data_preparation(shared_data, tmp_path):
    """The real datasets of the parts asked for convert, plan and preprocess at the quick spacing, with the fixed
    splits (only those: seg2 and seg4 are not prepared)."""
    work = tmp_path / "work"
    runner = StageRunner(work, total=4)
    parts = ["translation", "seg"]
    prepare_data(runner, QUICK, work, parts)
    assert sorted(p.name for p in (work / "raw").iterdir()) == ["Dataset601_RealBraTS4", "Dataset602_BraTS2015Expert"]
    translation = work / "preprocessed" / "Dataset601_RealBraTS4"
    splits = load_json(translation / "splits_final.json")
    assert splits[0]["val"] == ["AURORA-MET-0001", "TCGA-DU-7294"] and len(splits[0]["train"]) == 6
    seg = work / "preprocessed" / "Dataset602_BraTS2015Expert"
    assert load_json(seg / "splits_final.json")[0]["val"] == ["brats_2013_pat0005_1", "brats_2013_pat0006_1"]
    plans = load_json(seg / "PIRLPlans.json")
    assert plans["configurations"]["3d_fullres"]["spacing"] == [QUICK.spacing] * 3
    assert load_dataset_json(work / "raw" / "Dataset602_BraTS2015Expert").has_regions
    # a rerun skips every stage
    timings = load_json(work / "timings.json")
    prepare_data(StageRunner(work, total=4), QUICK, work, parts)
    assert load_json(work / "timings.json") == timings


def test_segmentation_verdicts_call_small_differences_ties_and_name_the_best_reference():
    labels = {"pirl": "P", "swin_scratch": "S", "reference_whole_brain": "W", "reference_threshold": "T"}
    verdicts = segmentation_verdicts(pd.Series({"P": 0.052, "S": 0.050, "W": 0.11, "T": 0.6}), labels, "FLAIR")
    assert "best reference T 0.600; no model beats it" in verdicts[0]
    assert "no difference (+0.002)" in verdicts[1]
    verdicts = segmentation_verdicts(pd.Series({"P": 0.70, "S": 0.60, "W": 0.11, "T": 0.3}), labels, "T1c")
    assert "beaten (by > 0.005) by: P 0.700, S 0.600." in verdicts[0] and "PIRL wins (+0.100)" in verdicts[1]
    verdicts = segmentation_verdicts(pd.Series({"P": 0.70, "S": 0.68, "W": 0.11, "T": 0.3}), labels, "T1c",
                                     spread={"P": 0.01, "S": 0.03})
    assert "within the seed spread (0.030), not evidence (+0.020)" in verdicts[1]
    verdicts = segmentation_verdicts(pd.Series({"P": 0.70, "S": 0.68, "W": 0.11, "T": 0.3}), labels, "T1c",
                                     spread={"P": float("nan"), "S": 0.0})
    assert "one seed, so no seed spread to judge it: not evidence (+0.020)" in verdicts[1]
    verdicts = segmentation_verdicts(pd.Series({"P": 0.70, "S": 0.60, "W": 0.11, "T": 0.3}), labels, "T1c",
                                     spread={"P": 0.01, "S": float("nan")})
    assert "one seed, so no seed spread to judge it: not evidence (+0.100)" in verdicts[1]


def test_a_measurement_stage_runs_again_when_its_command_changes_a_training_never(tmp_path, capsys):
    done = tmp_path / "done"
    done.touch()
    runner = StageRunner(tmp_path, total=4)
    runner.run("measure", ["platform"], done, same_command=True)  # never recorded: runs
    runner.run("measure", ["platform"], done, same_command=True)  # same command: done before
    runner.run("measure", ["platform", "--terse"], done, same_command=True)  # new inputs: runs again
    runner.run("train", ["platform"], done)  # a training with a done file is never re-run
    out = capsys.readouterr().out
    assert out.count("finished in") == 2 and out.count("done before") == 2
    assert "[2/4] measure: done before" in out and "[4/4] train: done before" in out


def test_dry_run_table_says_what_is_done_recorded_or_to_run_and_scales_the_minutes_by_steps(tmp_path):
    work, records = tmp_path / "work", tmp_path / "records"
    (work / "done").parent.mkdir(parents=True)
    (work / "done").touch()
    train = ["pirl_pipeline.cli.train", "D", "pretrain", "--epochs", "10", "--iters", "4"]
    save_json({"pretrain pirl seg4 fold1": {"seconds": 240.0, "command": "python -m x --epochs 10 --iters 4"},
               "evaluate pirl seg4 fold0": {"seconds": 60.0, "command": "python -m y"}}, records / "timings.json")
    stages = [("pretrain pirl seg4 fold0", "pirl", work / "done", train, False),  # done in the work folder
              ("evaluate pirl seg4 fold0", "pirl", work / "no", ["y"], False),  # only recorded: its own time
              ("pretrain pirl_long seg4 fold0", "pirl", work / "no", [*train[:-3], "50", "--iters", "4"], False),
              ("references seg4 fold0", "shared", work / "no", ["r"], False)]  # nothing of its kind recorded
    table = plan_table(stages, work, records)
    assert "| pretrain pirl seg4 fold0 | done | - |" in table
    assert "| evaluate pirl seg4 fold0 | to run (recorded: a rerun replaces the record) | 1.0 |" in table
    assert "| pretrain pirl_long seg4 fold0 | to run | 20.0 |" in table  # 200 steps at 6 s a step
    assert "| references seg4 fold0 | to run | ? |" in table
    assert "3 of 4 stages to run, about 21 min by the recorded wall times (1 without one)" in table


def test_records_keep_what_the_report_reads_when_a_new_checkout_lost_the_work_folder(tmp_path):
    first, second, out = tmp_path / "work", tmp_path / "work_new_checkout", tmp_path / "out"
    _fake_segmentation(first, "pirl", 0, ["p5", "p6"], dice=0.4)
    (first / "eval" / "pirl" / "seg_fold0" / "heatmap.png").write_bytes(b"\x89PNG")
    (first / "eval" / "references" / "seg_fold0").mkdir(parents=True)
    (first / "eval" / "references" / "seg_fold0" / "done").touch()  # an empty stage marker
    representation = first / "eval" / "representation_seg4" / "representation.csv"
    representation.parent.mkdir(parents=True)
    pd.DataFrame({"model": ["a", "a"], "dataset": "D", "representation": ["z", "x_h"], "retrieval": [0.1, 0.2]}
                 ).to_csv(representation, index=False)
    folder = Experiment(FULL, first).fold_folder("pirl", "seg", "PIRLSegTrainer", 0).path
    folder.mkdir(parents=True)
    history = [{"epoch": e, "val/volume_dice_whole_tumour": v} for e, v in enumerate([0.5, 0.7])]
    config = {"iters_per_epoch": 5, "pretrained": str(first.resolve() / "results" / "pirl" / "pretrain.pth")}
    torch.save({"config": config, "history": history, "network_weights": {"w": torch.ones(3)}},
               folder / "checkpoint_final.pth")
    save_json({"train pirl": {"seconds": 60.0, "command": "a"}}, first / "timings.json")
    root = save_records(first, out)
    assert (root / "eval" / "pirl" / "seg_fold0" / "per_case.csv").is_file()
    assert not (root / "eval" / "pirl" / "seg_fold0" / "heatmap.png").exists()  # no images in git
    recorded = root / folder.relative_to(first) / "checkpoint_final.pth"
    assert has_run(recorded) and not recorded.exists()  # the metadata stands in for the checkpoint
    assert run_meta(recorded)["history"] == history and "network_weights" not in run_meta(recorded)
    assert run_meta(recorded)["config"] == {"iters_per_epoch": 5, "pretrained": "WORK/results/pirl/pretrain.pth"}
    curves = finetune_curves_section(root, "seg")
    assert curves and curves == finetune_curves_section(first, "seg")
    # a later session, on a new checkout, runs another model and measures another representation: all add up
    _fake_segmentation(second, "swin_scratch", 0, ["p5", "p6"], dice=0.6)
    save_json({"train swin_scratch": {"seconds": 30.0, "command": f"python -m x --work {second.resolve()}"}},
              second / "timings.json")
    again = second / representation.relative_to(first)
    again.parent.mkdir(parents=True)
    pd.DataFrame({"model": ["b", "a"], "dataset": "D", "representation": ["z", "z"], "retrieval": [0.3, 0.4]}
                 ).to_csv(again, index=False)
    save_records(second, out)
    assert set(load_per_case(root, "seg", ["pirl", "swin_scratch"])["model"]) == {"pirl", "swin_scratch"}
    assert set(load_json(root / "timings.json")) == {"train pirl", "train swin_scratch"}
    assert load_json(root / "timings.json")["train swin_scratch"]["command"] == "python -m x --work WORK"
    rows = pd.read_csv(root / representation.relative_to(first)).set_index(["model", "representation"])
    assert rows["retrieval"].to_dict() == {("a", "x_h"): 0.2, ("b", "z"): 0.3, ("a", "z"): 0.4}  # a/z measured again
    report = write_report(root, out, QUICK, quick=False, parts=["seg"]).read_text()  # from the records alone
    assert "PIRL pre-train -> fine-tune (1 seed(s), folds [0]); SwinUNETR from scratch (1 seed(s), folds [0])" in report
