"""Shared fixtures: the real sample data folder, a temporary $PIRL_raw, a tiny-image writer, a CLI runner."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (the real sample data); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def pirl_raw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh raw-data root, set as $PIRL_raw for the test."""
    root = tmp_path / "raw"
    monkeypatch.setenv("PIRL_raw", str(root))
    return root


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """``write_image(path, zyx_array, spacing=(x, y, z), origin=..., direction=...)`` -> path (NIfTI or other)."""

    def write(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
              direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)) -> Path:
        image = sitk.GetImageFromArray(np.asarray(array))
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(path))
        return Path(path)

    return write


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture) -> Callable[..., tuple[int, str]]:
    """``run_cli(main, argv)`` -> (exit code, last non-empty stderr line; progress bars come before it)."""

    def run(main: Callable[[list[str]], int], argv: list[str]) -> tuple[int, str]:
        code = main([str(a) for a in argv])
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        return code, lines[-1] if lines else ""

    return run


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: as fast for tiny tensors and immune to oversubscription on shared cores.
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def brats(pirl_raw: Path) -> Path:
    """A BraTS dataset folder (``tests.evaluate_helpers.BRATS``'s dataset.json) under PIRL_raw."""
    from tests.evaluate_helpers import BRATS

    BRATS.save(pirl_raw / "Dataset501_BraTS")
    return pirl_raw / "Dataset501_BraTS"
