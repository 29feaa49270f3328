"""``pirl_report``: one folder (``report/``) that shows what a dataset's results folder holds.

- :mod:`.collect` finds and reads the trained folds (checkpoint history and config, training log,
  validation summary, missing-modality and translation matrices) and the prediction folders;
- :mod:`.overview` picks a held-out case and draws its slices (inputs, synthesised vs reference,
  segmentation overlays);
- :mod:`.figures` draws the training curves and the metric heat maps;
- :mod:`.markdown` writes ``report.md``;
- :mod:`.build` ties them together; whatever is missing is listed in the report, never fatal.
"""
from pirl_pipeline.report.build import ReportOptions, build_report

__all__ = ["ReportOptions", "build_report"]
