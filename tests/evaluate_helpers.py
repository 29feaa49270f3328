"""What the evaluation tests share: a BraTS dataset.json, its region labels on a small grid, the CLI error."""
from __future__ import annotations

import numpy as np

from pirl_pipeline.cli.evaluate import main
from pirl_pipeline.data.dataset_json import DatasetJson
from tests.synthetic import MRI4

SHAPE = (6, 7, 8)


BRATS = DatasetJson(MRI4, {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3], "enhancing tumor": 3},
                    5, regions_class_order=[2, 1, 3], extra={"label_names": {"1": "NCR", "2": "ED", "3": "ET"}})


def labels(seed: int) -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[1:5, 2:6, 2:7] = 2
    lab[2:4, 3:5, 3:6] = 1
    lab[2:4, 3:5, 3] = 3 if seed % 2 == 0 else 1
    return lab


def error_of(run_cli, argv) -> str:
    code, err = run_cli(main, [str(a) for a in argv])
    assert code == 2, err
    assert err.startswith("error: "), err
    return err
