"""experiments/ Table 11 (seg4, seg4_translation): its layout, stage plan, Table-7 rows of both presets, the held-out
representation and the pre-training-length curve."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pandas as pd
import pytest
import torch

from experiments import data
from experiments.config import FULL
from experiments.run import Experiment


def test_table11_lays_out_every_subset_and_measures_the_dilution():
    from experiments.table11 import dilution, paired_cases, table11

    subsets = ["FLAIR", "T1", "FLAIR+T1"]
    rows = pd.DataFrame([{"model": model, "seed": "first", "fold": 0, "case": case, "subset": subset,
                          "Dice/whole tumour": score, "Dice/tumour core": score / 2, "Dice/enhancing tumour": 0.1}
                         for model, scores in (("pirl", (0.8, 0.2, 0.82)), ("pirl_paper", (0.8, 0.2, 0.6)))
                         for case in ("a", "b") for subset, score in zip(subsets, scores)])
    table = table11(rows)
    assert list(table.index) == [*subsets, "mean"]
    assert table.loc["FLAIR+T1", ("PIRL, paper preset", "WT")] == pytest.approx(0.6)
    drop = dilution(rows)
    assert drop.loc["PIRL, paper preset", "FLAIR+T1 - FLAIR"] == pytest.approx(-0.2)
    assert drop.loc["PIRL (default: fixes on)", "all - best single"] == pytest.approx(0.02)
    pairs = paired_cases(rows).reset_index().set_index("subsets")  # the one pair both rows are in
    assert pairs.loc["mean of 15", "mean"] == pytest.approx(0.22 / 3)
    assert pairs.loc["all four", "min"] == pytest.approx(0.22)
    assert list(pairs["cases ahead"]) == ["2/2", "2/2"]
    fold1 = rows[rows["model"] == "pirl"].assign(fold=1, case=lambda r: r["case"] + "1")  # only pirl tested on fold 1
    marked = "PIRL, paper preset (fold 0 only)"  # 2 cases beside the other row's 4: said in its label
    assert (marked, "WT") in table11(pd.concat([rows, fold1])).columns
    assert marked in dilution(pd.concat([rows, fold1])).index


def test_a_fold_run_with_fewer_seeds_neither_outweighs_the_others_nor_passes_for_seed_spread(tmp_path):
    from experiments.table11 import table11, table11_section
    from experiments.tables import seed_means, seed_spread, translation_summary, translation_table

    runs = [("pirl", 0, "a", 0.8), ("pirl_seed2", 0, "a", 0.6), ("pirl", 1, "c", 0.2)]  # fold 1: first seed only
    for run, fold, case, dice in runs:
        folder = tmp_path / "eval" / run / f"seg4_fold{fold}"
        folder.mkdir(parents=True)
        pd.DataFrame([{"case": case, "subset": "FLAIR", "Dice/whole tumor": dice}]).to_csv(folder / "per_case.csv")
    text = "\n".join(table11_section(tmp_path, tmp_path))
    assert "Seeds per fold: PIRL (default: fixes on) 2/1." in text and "fixes on) 0.200 / 0.200." in text
    assert "| PIRL (default: fixes on) | 0.700 / 0.700 | 0.200 / 0.200 | 0.500 / 0.500 |" in text  # per fold
    assert "Whole tumour (WT) Dice, mean over the cases (a case's seeds averaged first):\n\n| subset | PIRL (default: fixes on) |" in text
    assert "| FLAIR | 0.450 |" in text  # one table per region: a subset's row holds one number per model
    assert "![Whole tumour (WT) Dice](table11_wt.png)" in text and (tmp_path / "table11_wt.png").stat().st_size > 0
    assert pd.read_csv(tmp_path / "table11_seg4.csv", header=[0, 1], index_col=0).iloc[0, 0] == pytest.approx(0.45)
    shutil.rmtree(tmp_path / "eval" / "pirl_seed2")
    assert "the 15 subsets: none (one seed per row)." in "\n".join(table11_section(tmp_path, tmp_path))
    rows = pd.DataFrame([{"model": "pirl", "seed": "2" if "seed2" in run else "first", "fold": fold, "case": case,
                          "subset": "FLAIR", "Dice/whole tumour": dice} for run, fold, case, dice in runs])
    assert seed_spread(rows, "Dice/whole tumour")["pirl"] == pytest.approx(0.2)  # case a only, not 0.5 vs 0.6
    averaged = seed_means(rows, ["subset"], ["Dice/whole tumour"])
    assert table11(averaged).loc["FLAIR", ("PIRL (default: fixes on)", "WT")] == pytest.approx(0.45)
    assert math.isnan(seed_spread(rows[rows["seed"] == "first"], "Dice/whole tumour")["pirl"])
    external = pd.DataFrame([{"model": "pirl", "seed": seed, "fold": fold, "case": "x", "PSNR": v}  # one case, 2 folds
                             for seed, fold, v in (("first", 0, 10.5), ("2", 0, 10.4), ("first", 1, 10.9))])
    assert seed_spread(external, "PSNR")["pirl"] == pytest.approx(0.1)  # fold 0's models only
    external = external.assign(source="T1", target="T2", NMSE=0.5, SSIM=0.3)
    summary = translation_summary(external, {"pirl": "PIRL"})
    assert summary.loc["PIRL", "PSNR mean"] == pytest.approx((10.45 + 10.9) / 2)  # each fold's case once, not 10.6
    assert translation_table(external, {"pirl": "PIRL"}).loc["PIRL", ("T1->T2", "PSNR")] == pytest.approx(10.675)


def test_a_run_of_another_fold_or_fewer_seeds_keeps_the_held_out_representation_rows_of_fold_0(tmp_path):
    from experiments.config import FULL

    def representation_stage(budget, models=None, parts=("seg4",)):
        experiment = Experiment(budget, tmp_path, models)
        experiment.plan(list(parts))
        return next(s[3] for s in experiment.stages if s[0] == "representation seg4")

    everything = representation_stage(FULL)  # fold 0, both seeds, every model
    for model in ("pirl", "pirl_seed2"):  # fold 0's pre-trainings on disk
        checkpoint = Experiment(FULL, tmp_path).fold_folder(model, "seg4", "PIRLPretrainer", 0).checkpoint()
        checkpoint.parent.mkdir(parents=True)
        checkpoint.touch()
    fold1 = representation_stage(dataclasses.replace(FULL, seeds=(12345,), seg4_folds=(1,)), ["pirl"])
    assert all("fold_1" not in a for a in fold1)
    assert sum("pirl/" in a for a in fold1) == 1 and sum("pirl_seed2/" in a for a in fold1) == 1
    assert set(fold1) <= set(everything) and not any("Table 7" in a for a in everything)
    row3 = Experiment(FULL, tmp_path).fold_folder("ablation_row3_paper", "seg4", "PIRLPretrainer", 0).checkpoint()
    row3.parent.mkdir(parents=True)
    row3.touch()  # a Table-7 pre-training of seg4_translation: measured once it exists
    assert sum(a.startswith("Table 7 row 3, paper preset pre-training") for a in representation_stage(FULL)) == 1
    planned = representation_stage(FULL, ["pirl", "ablation_row2_paper"], ["seg4", "seg4_translation"])  # not on disk yet
    assert sum(a.startswith("Table 7 row 2, paper preset pre-training") for a in planned) == 1


def test_table11_plan_fine_tunes_swinunetr_from_the_pirl_pretraining_and_measures_the_representation(tmp_path):
    from experiments.config import FULL

    experiment = Experiment(dataclasses.replace(FULL, seeds=(12345,)), tmp_path)
    experiment.plan(["seg4"])
    names = [s[0] for s in experiment.stages]
    assert names.count("pretrain pirl seg4 fold0") == 1  # swin_pirl reuses it
    swin = next(s[3] for s in experiment.stages if s[0] == "train swin_pirl seg4 fold0")
    assert "SwinUNETRFromPIRLSegTrainer" in swin and any("/pirl/" in a for a in swin)
    assert "train pirl_default_mean seg4 fold0" not in names  # a diagnostic pre-training only
    assert names[-1] == "representation seg4"
    measured = experiment.stages[-1][3]
    swin = measured[measured.index("--swinunetr") + 1:]
    assert len(swin) == 1 and "SwinUNETRSegTrainer" in swin[0] and "/swin_scratch/" in swin[0]
    paper = next(s[3] for s in experiment.stages if s[0] == "pretrain pirl_paper seg4 fold0")
    assert "variant=paper" in paper


def test_long_pretraining_keeps_every_budget_multiple_measures_each_and_fine_tunes_the_last(tmp_path):
    done = Experiment(FULL, tmp_path).fold_folder("pirl_paper", "seg4", "PIRLPretrainer", 0).checkpoint()
    done.parent.mkdir(parents=True)
    done.touch()  # a pre-training of an earlier run: measured again beside the new ones, never dropped
    experiment = Experiment(FULL, tmp_path, ["pirl", "pirl_long"])
    experiment.plan(["seg4"])
    stages = {s[0]: s[3] for s in experiment.stages}
    long = stages["pretrain pirl_long seg4 fold0"]
    assert long[long.index("--epochs") + 1] == str(5 * FULL.epochs) and f"keep_every={FULL.epochs}" in long
    assert "keep_every" not in " ".join(stages["pretrain pirl seg4 fold0"])
    train = stages["train pirl_long seg4 fold0"]
    assert train[train.index("--epochs") + 1] == str(FULL.epochs) and "keep_every" not in " ".join(train)
    assert train[train.index("--pretrained") + 1].endswith("/pirl_long/Dataset604_BraTS2018Four/"
                                                             "PIRLPretrainer__PIRLPlans__3d_fullres/fold_0/"
                                                             "checkpoint_final.pth")
    assert "train pirl_long_seed2 seg4 fold0" not in stages  # first seed only
    measured = stages["representation seg4"]
    points = [a for a in measured if a.startswith("PIRL (default), 5x pre-training")]
    steps = FULL.pretrain_steps
    assert [p.split("=")[0] for p in points] == [
        f"PIRL (default), 5x pre-training after {k * steps} steps (seg4 fold 0, seed 12345)" for k in range(1, 6)]
    assert points[0].endswith(f"checkpoint_epoch_{FULL.epochs:04d}.pth") and points[-1].endswith("checkpoint_final.pth")
    labels = [a.split("=")[0] for a in measured[measured.index("--checkpoint") + 1:]]
    assert [label.split(" pre-training (")[0] for label in labels[:3]] == ["PIRL (default: fixes on)"] * 2 + [
        "PIRL, paper preset"]  # pirl's two seeds (planned), pirl_paper's first (on disk); not its second
    assert "--swinunetr" not in measured  # none planned, none on disk


def test_seg4_translation_fine_tunes_both_presets_from_table11s_pretrainings(tmp_path):
    from experiments.table11_translation import table11_translation_section

    experiment = Experiment(dataclasses.replace(FULL, seeds=(12345,)), tmp_path)
    experiment.plan(["seg4", "seg4_translation"])
    stages = {s[0]: s[3] for s in experiment.stages}
    assert not [n for n in stages if n.startswith("pretrain") and "seg4_translation" in n]
    for key in ("pirl", "pirl_paper"):
        seg, translate = stages[f"train {key} seg4 fold0"], stages[f"train {key} seg4_translation fold0"]
        assert translate[translate.index("-tr") + 1] == "PIRLTranslateTrainer"
        assert translate[translate.index("--pretrained") + 1] == seg[seg.index("--pretrained") + 1]
    assert "variant=paper" in stages["train pirl_paper seg4_translation fold0"]
    assert "train swin_pirl seg4_translation fold0" not in stages
    cases = [f"c{i}" for i in range(8)]
    assert data.splits_for("seg4_translation", _plans_folder(tmp_path, cases)) == data.splits_for(
        "seg4", _plans_folder(tmp_path, cases))
    for model, psnr in (("pirl", 14.0), ("pirl_paper", 12.0), ("reference_identity", 13.0)):
        out = tmp_path / "eval" / model / "seg4_translation_fold0"
        out.mkdir(parents=True)
        pd.DataFrame([{"case": "a", "source": src, "target": tgt, "PSNR": psnr, "NMSE": 0.5, "SSIM": 0.3}
                      for src, tgt in (("T1", "T2"), ("T2", "T1"), ("T1", "FLAIR"))]).to_csv(
            out / "per_case.csv", index=False)
    lines = "\n".join(table11_translation_section(tmp_path, tmp_path))
    assert "PIRL (default: fixes on) beats **(reference) copy the source modality** on PSNR 3/3" in lines
    assert "PIRL, paper preset beats **(reference) copy the source modality** on PSNR 0/3" in lines
    assert "PSNR per direction" in lines and "| model | T1->T2 | T2->T1 | T1->FLAIR |" in lines
    assert (tmp_path / "table11_translation_summary.csv").is_file()
    assert "### The same models on the Dataset601_RealBraTS4 cases" in lines and "Not run yet" in lines


def test_seg4_translation_models_are_also_scored_on_every_case_of_the_translation_data(tmp_path):
    """The main translation rows (not the on-request Table-7 rows) predict all Dataset601 cases too, beside
    references fitted on seg4's training cases; the report gives them their own block."""
    from experiments.run import data_parts
    from experiments.table11_translation import table11_translation_section

    experiment = Experiment(FULL, tmp_path, ["pirl", "swin_scratch", "ablation_row1"])
    experiment.plan(["seg4_translation"])
    stages = {s[0]: s[3] for s in experiment.stages}
    assert data_parts(["seg4_translation"]) == ["translation", "seg4"]
    for run in ("pirl", "pirl_seed2", "swin_scratch"):
        argv = stages[f"evaluate {run} seg4_translation_external fold0"]
        assert argv[argv.index("-i") + 1] == str(tmp_path / "raw" / "Dataset601_RealBraTS4" / "imagesTr")
        assert argv[argv.index("-o") + 1] == str(tmp_path / "eval" / run / "seg4_translation_external_fold0")
        assert argv[argv.index("-tr") + 1] == stages[f"train {run} seg4_translation fold0"][
            stages[f"train {run} seg4_translation fold0"].index("-tr") + 1]
    assert "evaluate ablation_row1 seg4_translation fold0" in stages
    assert "evaluate ablation_row1 seg4_translation_external fold0" not in stages
    assert stages["references seg4_translation_external fold0"][-3:] == ["seg4_translation_external", "--fold", "0"]
    for model, part, psnr in (("pirl", "seg4_translation", 14.0), ("pirl", "seg4_translation_external", 11.0),
                              ("reference_identity", "seg4_translation_external", 12.0)):
        out = tmp_path / "eval" / model / f"{part}_fold0"
        out.mkdir(parents=True)
        pd.DataFrame([{"case": case, "source": "T1", "target": "T2", "PSNR": psnr, "NMSE": 0.5, "SSIM": 0.3}
                      for case in (["a"] if part == "seg4_translation" else ["x", "y"])]).to_csv(
            out / "per_case.csv", index=False)
    lines = "\n".join(table11_translation_section(tmp_path, tmp_path))
    block = lines[lines.index("### The same models on the Dataset601_RealBraTS4 cases"):]
    assert "the 2 four-modality cases of Dataset601_RealBraTS4 (x, y): with its fold's 1 held-out" in block
    assert "PIRL (default: fixes on) beats **(reference) copy the source modality** on PSNR 0/1" in block
    assert pd.read_csv(tmp_path / "table11_translation_external_summary.csv", index_col=0).loc[
        "PIRL (default: fixes on)", "PSNR mean"] == 11.0


def _raw_four_modality(folder, cases, channels=("T1", "T1ce", "T2", "FLAIR")):
    import numpy as np
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": {"background": 0, "tumour": 1},
        "numTraining": len(cases), "file_ending": ".nii.gz"}))
    rng = np.random.default_rng(0)
    for case in cases:
        for c in range(len(channels)):
            image = np.zeros((12, 12, 12), np.float32)
            image[2:10, 2:10, 2:10] = rng.uniform(1, 100, (8, 8, 8))
            (folder / "imagesTr").mkdir(exist_ok=True)
            sitk.WriteImage(sitk.GetImageFromArray(image), str(folder / "imagesTr" / f"{case}_{c:04d}.nii.gz"))


def test_external_references_fit_on_the_owning_parts_training_cases_and_score_every_external_case(tmp_path):
    from experiments.reference_rows import main as reference_rows

    _raw_four_modality(tmp_path / "raw" / "Dataset604_BraTS2018Four", ["a", "b", "c"])
    _raw_four_modality(tmp_path / "raw" / "Dataset601_RealBraTS4", ["x", "y"])
    splits = tmp_path / "preprocessed" / "Dataset604_BraTS2018Four" / "splits_final.json"
    splits.parent.mkdir(parents=True)
    splits.write_text(json.dumps([{"train": ["a", "b"], "val": ["c"]}]))
    argv = ["--work", str(tmp_path), "--part", "seg4_translation_external", "--fold", "0"]
    assert reference_rows(argv) == 0
    for kind in ("identity", "histogram"):
        rows = pd.read_csv(tmp_path / "eval" / f"reference_{kind}" / "seg4_translation_external_fold0" / "per_case.csv")
        assert sorted(set(rows["case"])) == ["x", "y"] and len(rows) == 2 * 12
    fitted = json.loads((tmp_path / "eval" / "reference_histogram" / "seg4_translation_external_fold0"
                         / "fitted.json").read_text())
    assert len(fitted) == 12
    shutil.rmtree(tmp_path / "raw" / "Dataset601_RealBraTS4")
    _raw_four_modality(tmp_path / "raw" / "Dataset601_RealBraTS4", ["x"], ("T1", "T2", "T1ce", "FLAIR"))
    assert reference_rows(argv) != 0  # other channel order: refused, not scored against the wrong modality


def test_seg4_table7_rows_run_on_request_with_both_presets_beside_each_presets_row6(tmp_path):
    from experiments.config import representation_csv
    from experiments.table11 import representation_label
    from experiments.table11_translation import table7_block

    models = ["pirl", "pirl_paper", "ablation_row1", "ablation_row1_paper"]
    experiment = Experiment(FULL, tmp_path, models)
    experiment.plan(["seg4_translation"])
    stages = {s[0]: s[3] for s in experiment.stages}
    paper = stages["pretrain ablation_row1_paper seg4 fold0"]
    assert "variant=paper" in paper and paper[paper.index("--disable") + 1:] == ["invariance", "prior"]
    train = stages["train ablation_row1_paper seg4_translation fold0"]
    assert train[train.index("-tr") + 1] == "PIRLTranslateTrainer" and "variant=paper" in train
    assert "variant=default" in stages["train ablation_row1 seg4_translation fold0"]
    assert "train ablation_row1_seed2 seg4_translation fold0" not in stages  # first seed only
    assert "Not run yet" in table7_block(tmp_path, tmp_path, pd.DataFrame())[2]
    for model, psnr in (("pirl", 12.0), ("pirl_paper", 11.0), ("ablation_row1", 12.5), ("ablation_row1_paper", 11.0),
                        ("pirl_seed2", 20.0)):
        out = tmp_path / "eval" / model / "seg4_translation_fold0"
        out.mkdir(parents=True)
        pd.DataFrame([{"case": "a", "source": "T1", "target": "T2", "PSNR": psnr, "NMSE": 0.5, "SSIM": 0.3}]).to_csv(
            out / "per_case.csv", index=False)
    references = pd.DataFrame([{"model": "reference_identity", "fold": 0, "case": "a", "PSNR": 10.0, "SSIM": 0.2},
                               *({"model": "pirl_paper", "seed": seed, "fold": 0, "case": "a", "PSNR": psnr, "SSIM": 0.3}
                                 for seed, psnr in (("first", 11.0), ("2", 11.5)))])
    for run, retrieval in (("ablation_row1_paper", 0.75), ("ablation_row1_paper_seed2", 0.25)):  # first seed read
        checkpoint = experiment.fold_folder(run, "seg4", "PIRLPretrainer", 0).checkpoint()
        checkpoint.parent.mkdir(parents=True)
        history = [{"epoch": e, "val/health_swap": 0.001, "val/health_spread": 0.4,
                    "val/health_retrieval": retrieval + e / 10} for e in range(2)]  # the last epoch is read
        torch.save({"config": {"iters_per_epoch": 4}, "history": history}, checkpoint)
    held_out = [{"model": representation_label(label, 0, seed), "dataset": "Dataset601_RealBraTS4",
                 "representation": "x_h", "retrieval_top1_centered": r, "health_spread": 0.5}
                for label, seed, r in (("Table 7 row 1, paper preset", 12345, 0.375), ("PIRL, paper preset", 12345, 0.25),
                                       ("PIRL, paper preset", 2, 0.5))]  # the first seed is read
    representation_csv(tmp_path, "seg4").parent.mkdir(parents=True)
    pd.DataFrame(held_out).to_csv(representation_csv(tmp_path, "seg4"), index=False)
    text = "\n".join(table7_block(tmp_path, tmp_path, references))
    table = pd.read_csv(tmp_path / "table11_table7.csv", index_col=[0, 1])
    assert table.loc[("paper", 1), "retrieval"] == 0.85 and table.loc[("paper", 1), "swap"] == 0.001
    assert table.loc[("paper", 1), "held-out retrieval"] == 0.375 and table.loc[("paper", 6), "held-out retrieval"] == 0.25
    assert table["held-out retrieval"].isna().sum() == 2
    assert table["retrieval"].isna().sum() == 3  # rows whose pre-training logged no health
    assert table.loc[("default", 6), "PSNR"] == 12.0 and table.loc[("default", 1), "PSNR"] == 12.5  # first seed
    assert table.loc[("paper", 6), "PSNR"] == 11.0 and len(table) == 4
    assert "default preset:\n- PSNR: of the other 1 rows, 1 beat the full objective" in text
    assert "paper preset:\n- PSNR: of the other 1 rows, 0 beat the full objective (row 6) by more than 0.05, 1 tie" \
        in text
    assert "copy the source modality 10.000 dB / SSIM 0.200" in text
    assert text.count("- For scale: row 6's PSNR seed spread") == 1  # the paper preset's: the default has one seed
    assert "(the paper: row 6 best).\n- For scale: row 6's PSNR seed spread (its seeds above) 0.50 dB.\n" in text


def _plans_folder(root, cases):
    folder = root / "pre"
    (folder / "pirl_plans_3d_fullres").mkdir(parents=True, exist_ok=True)
    for case in cases:
        (folder / "pirl_plans_3d_fullres" / f"{case}.json").write_text("{}")
    return folder


def test_held_out_representation_averages_the_seeds_of_each_pretraining(tmp_path):
    from experiments.table11 import BOTTLENECK_STAGE, held_out_representation, representation_label

    out = tmp_path / "eval" / "representation_seg4"
    out.mkdir(parents=True)
    rows = [{"model": name, "dataset": "Dataset601_RealBraTS4", "representation": "x_h", "subjects": 8, "retrieval_top1_centered": r,
             "health_spread": 0.5, "between_std_relative": 0.01, "cosine_other_subjects": 0.99, "health_swap": 0.0,
             "health_prior_entropy": 0.5, "health_prior_share": 0.1}
            for name, r in ((representation_label("PIRL", 0, 12345), 0.25), (representation_label("PIRL", 0, 2), 0.5),
                            ("random initialisation", 0.125))]
    rows.append({**rows[0], "model": representation_label("SwinUNETR", 0, 2, BOTTLENECK_STAGE),
                 "representation": "bottleneck", "retrieval_top1_centered": 0.75})
    rows.append({**rows[0], "model": representation_label("Table 7 row 1", 0, 12345)})  # in the Table-7 block
    pd.DataFrame(rows).to_csv(out / "representation.csv", index=False)
    table = "\n".join(held_out_representation(tmp_path))
    assert "Table 7 row 1" not in table
    assert "| PIRL pre-training (seg4 fold 0) | 8 | 2 | 0.375 |" in table  # mean of the two seeds
    assert table.count("| random initialisation | 8 | 1 | 0.125 |") == 1
    assert "| SwinUNETR after seg training, deepest encoder state (seg4 fold 0) | 8 | 1 | 0.750 |" in table
    pirl_row = next(line for line in table.splitlines() if line.startswith("| PIRL pre-training"))
    assert pirl_row.split("|")[-3].strip() == "0.250"  # retrieval seed spread


def test_pretraining_length_curve_reads_every_kept_checkpoint_and_the_fine_tunings(tmp_path):
    from experiments.config import TABLE11, representation_csv
    from experiments.table11 import pretraining_length_section, representation_label

    label = next(m.label for m in TABLE11 if m.key == "pirl_long")
    rows = [{"model": representation_label(label, 0, 12345, f"after {steps} steps"), "dataset": "Dataset601_RealBraTS4",
             "representation": "x_h", "subjects": 8, "retrieval_top1_centered": r, "health_spread": 0.4,
             "health_swap": 0.0} for steps, r in ((40, 0.25), (80, 0.5))]
    rows.append({**rows[0], "model": representation_label("PIRL", 0, 12345)})  # not a curve point
    representation_csv(tmp_path, "seg4").parent.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(representation_csv(tmp_path, "seg4"), index=False)
    for model, dice in (("pirl", 0.6), ("pirl_long", 0.7)):
        out = tmp_path / "eval" / model / "seg4_fold0"
        out.mkdir(parents=True)
        pd.DataFrame([{"case": "a", "subset": "FLAIR", "Dice/whole tumor": dice - 0.4},  # the last subset: all
                      {"case": "a", "subset": "T1+FLAIR", "Dice/whole tumor": dice}]).to_csv(out / "per_case.csv",
                                                                                             index=False)
    text = "\n".join(pretraining_length_section(tmp_path, tmp_path))
    curve = pd.read_csv(tmp_path / "table11_pretraining_length.csv", index_col=[0, 1])
    assert list(curve.index) == [(label, 40), (label, 80)]
    assert curve["held-out retrieval (chance 0.125)"].tolist() == [0.25, 0.5]
    assert (tmp_path / "table11_pretraining_length.png").is_file()
    assert f"mean of the 2 subsets: PIRL (default: fixes on) 0.600 / 0.400, {label} 0.700 / 0.500." in text
    assert f"| {label} | 40 | 0.250 |" in text  # steps as integers
    representation_csv(tmp_path, "seg4").unlink()
    assert pretraining_length_section(tmp_path, tmp_path) == []


def test_the_collapse_probe_measures_the_shared_share_and_sees_identical_subjects_as_one(one_torch_thread):
    from experiments.collapse_probe import PATCH, measure
    from pirl_pipeline.networks import PIRLNet

    torch.manual_seed(0)
    net = PIRLNet(4, 4, PATCH, 12, depths=(1, 1, 1, 1), window_size=4, fusion="joint").eval()
    different = measure(net, torch.randn(3, 4, *PATCH))
    assert 0 < different["shared"] < 1 and different["z_between_std"] > 0
    same = measure(net, torch.randn(1, 4, *PATCH).expand(3, -1, -1, -1, -1).contiguous())
    assert same["z_between_std"] < 1e-6  # three copies of one subject: nothing tells them apart
    assert same["shared"] > different["shared"]


def test_health_table_counts_each_fold_once_and_says_how_many_folds_and_runs(tmp_path):
    from experiments.table11 import health_section

    experiment = Experiment(FULL, tmp_path)
    for run, fold, retrieval in (("pirl", 0, 0.2), ("pirl_seed2", 0, 0.4), ("pirl", 1, 0.9)):
        checkpoint = experiment.fold_folder(run, "seg4", "PIRLPretrainer", fold).checkpoint()
        checkpoint.parent.mkdir(parents=True)
        history = [{"epoch": 0, "val/health_swap": 0.0, "val/health_retrieval": retrieval}]
        torch.save({"config": {"iters_per_epoch": 4}, "history": history}, checkpoint)
    text = "\n".join(health_section(tmp_path, tmp_path))
    # fold 0's two seeds averaged first (0.3), then the folds: 0.6, not the runs' mean 0.5
    assert "| pre-training | PIRL (default: fixes on) | 0.000 |" in text
    line = next(row for row in text.splitlines() if row.startswith("| pre-training | PIRL (default"))
    assert "| 0.600 |" in line and line.endswith("| 2 | 3 |")
    curve = next(row for row in text.splitlines() if row.startswith("| PIRL (default: fixes on) | 4 |"))
    assert "| 0.600 |" in curve
    assert (tmp_path / "table11_health_curve.png").stat().st_size > 0


def test_a_long_health_curve_is_tabled_by_its_first_middle_and_last_points():
    from experiments.table11 import curve_points

    index = pd.MultiIndex.from_tuples([("long", s) for s in range(4, 204, 4)] + [("one point", 4)],
                                      names=["model", "steps"])
    table = curve_points(pd.DataFrame({"swap": range(51)}, index=index))
    assert list(table.index) == [("long", 4), ("long", 100), ("long", 200), ("one point", 4)]
