"""End-of-fold validation of a fine-tuned model on whole volumes: the fold's validation cases are read
from the raw dataset, predicted with the full sliding window (no TTA) exactly as ``pirl_predict`` does and scored as
``pirl_evaluate`` does, into ``validation/``: segmentation from all modalities (predictions + summary; the
post-processing chosen on them goes to ``postprocessing.json`` in the fold folder),
translation from every single source modality to every other one (PSNR/SSIM matrices, as
``pirl_evaluate_missing``)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pirl_pipeline.data.dataset_json import group_channel_files
from pirl_pipeline.data.image_io import read_array
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.evaluate import write_summary
from pirl_pipeline.evaluation.missing_modalities import translation_matrices, translation_table, write_results
from pirl_pipeline.evaluation.postprocessing import determine_postprocessing
from pirl_pipeline.evaluation.segmentation import evaluate_segmentation_case
from pirl_pipeline.inference.model_folder import TrainedModel
from pirl_pipeline.inference.postprocessing import save_postprocessing
from pirl_pipeline.inference.predictor import PIRLPredictor
from pirl_pipeline.paths import raw_root
from pirl_pipeline.tasks import Task

log = logging.getLogger("pirl")


def validate_fold(network: torch.nn.Module, kind: str, task: Task, ctx, patch_size: list[int],
                  save_probabilities: bool = False) -> Path | None:
    """Predict and score ``ctx.val_cases``; returns the summary path, or None when the raw data are absent."""
    dj = ctx.dataset_json
    raw = raw_root() / ctx.plans.dataset_name
    try:
        files = group_channel_files(raw / "imagesTr", dj)
    except PirlInputError as err:
        log.warning("full-volume validation skipped (%s); the patch-level summary stays", err)
        return None
    model = TrainedModel([network.eval()], kind, task.name, ctx.plans, ctx.configuration, dj, patch_size, ["current"])
    predictor = PIRLPredictor(model, ctx.device, mirror=False, save_probabilities=save_probabilities)
    fold, out = ctx.fold_folder, ctx.fold_folder.validation
    info = {"kind": "full-volume sliding-window validation (no TTA)", "task": task.name, "cases": len(ctx.val_cases)}
    if not task.predicts_labels:  # every single source modality -> every other modality (Table 10 layout)
        table = translation_table(predictor, {case: files[case] for case in ctx.val_cases})
        write_results(table, translation_matrices(table), out, info)
        return fold.validation_summary
    rows, pairs = {}, {}
    for case in ctx.val_cases:  # all modalities in
        images, geometry = predictor.read_case(case, files[case])
        result = predictor.predict_case(images, geometry)
        predictor.export(case, result, geometry, out, dj.file_ending)
        reference_file = raw / "labelsTr" / f"{case}{dj.file_ending}"
        reference, _ = read_array(reference_file)
        pairs[case] = (result.segmentation.astype(np.int16), reference.astype(np.int16))
        # fix: scored from the written files by pirl_evaluate's own function (distances in mm from the
        # reference's spacing), so validation and pirl_evaluate give identical numbers
        rows[case] = evaluate_segmentation_case(reference_file, out / f"{case}{dj.file_ending}", dj)
    write_summary(pd.DataFrame.from_dict(rows, orient="index"), fold.validation_summary, info)
    save_postprocessing(determine_postprocessing(pairs, dj), fold)
    return fold.validation_summary
