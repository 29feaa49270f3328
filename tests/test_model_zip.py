"""pirl_export_model / pirl_install_model (issue 13, part 4): the round trip, crafted zips from strangers, and the
SwinUNETR export loaded by plain MONAI in an interpreter that cannot import pirl."""
import io
import json
import os
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch

from pirl_pipeline.cli.model_zip import export_main, install_main
from pirl_pipeline.cli.plan_and_preprocess import main as plan_main
from pirl_pipeline.data.dataset_json import load_dataset_json
from pirl_pipeline.file_io import save_json
from pirl_pipeline.fold_folder import FoldFolder
from pirl_pipeline.inference.model_folder import load_model_folder
from pirl_pipeline.paths import model_folder
from pirl_pipeline.trainer_config import TrainerConfig
from pirl_pipeline.training.base_trainer import RunContext
from pirl_pipeline.training.registry import build_trainer
from plans.plans_manager import Plans
from tests.synthetic import write_raw_dataset

torch.set_num_threads(1)
PREFIX = "Dataset951_Zip/PIRLSegTrainer__PIRLPlans__3d_fullres"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A PIRLSegTrainer model folder (fold 0, checkpoint written by the trainer, untrained) and its results root."""
    root = tmp_path_factory.mktemp("zip")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"PIRL_raw": root / "raw", "PIRL_preprocessed": root / "pre", "PIRL_results": root / "res"}.items():
            mp.setenv(k, str(v))
        write_raw_dataset(root / "raw", 951, "Zip", num_cases=2, shape=(30, 32, 30), channels={"0": "T1", "1": "FLAIR"})
        assert plan_main(["-d", "951", "-np", "1"]) == 0
        pre = root / "pre" / "Dataset951_Zip"
        plans = Plans.load(pre / "PIRLPlans.json")
        data = pre / plans.configuration("3d_fullres").data_identifier
        folder = model_folder("Dataset951_Zip", "PIRLSegTrainer", "PIRLPlans", "3d_fullres")
        ctx = RunContext(plans, "3d_fullres", load_dataset_json(pre), data, FoldFolder(folder, 0), ["case000"], ["case001"])
        config = TrainerConfig(task="seg", trainer="PIRLSegTrainer", patch_size=[64, 64, 64], feature_size=12)
        trainer = build_trainer("PIRLSegTrainer", ctx, config, None)
        trainer.save("checkpoint_final.pth")
        save_json(config.to_dict(), folder / "fold_0" / "config.json")
        (folder / "fold_0" / "validation").mkdir()
        (folder / "fold_0" / "validation" / "case001.nii.gz").write_bytes(b"a prediction of a training case")
        save_json({"metrics": {}}, folder / "fold_0" / "validation" / "summary.json")
        save_json({"keep_largest": [[1, 2]]}, folder / "fold_0" / "postprocessing.json")
        yield folder, trainer.network


def test_export_then_install_round_trip(model, tmp_path, monkeypatch, capsys):
    folder, _ = model
    assert export_main(["-m", str(folder), "-o", str(tmp_path / "model.zip")]) == 0
    names = set(zipfile.ZipFile(tmp_path / "model.zip").namelist())
    assert names == {f"{PREFIX}/{n}" for n in ("dataset.json", "PIRLPlans.json", "fold_0/checkpoint_final.pth",
                                               "fold_0/config.json", "fold_0/validation/summary.json",
                                               "fold_0/postprocessing.json")}
    monkeypatch.setenv("PIRL_results", str(tmp_path / "other"))
    assert install_main([str(tmp_path / "model.zip")]) == 0
    installed = tmp_path / "other" / PREFIX
    assert (installed / "fold_0" / "checkpoint_final.pth").read_bytes() == \
        (folder / "fold_0" / "checkpoint_final.pth").read_bytes()
    assert load_model_folder(installed).folds == ["0"]
    assert install_main([str(tmp_path / "model.zip")]) == 2
    assert "a model is installed there already (--overwrite replaces it)" in capsys.readouterr().err
    (installed / "fold_0" / "stale.txt").write_text("from the old install")
    assert install_main([str(tmp_path / "model.zip"), "--overwrite"]) == 0
    assert not (installed / "fold_0" / "stale.txt").exists()
    assert [p.name for p in installed.parent.iterdir()] == [installed.name]  # no staging left behind


def test_a_failed_replace_keeps_the_installed_model(model, tmp_path, monkeypatch, capsys):
    """--overwrite whose last rename fails (a full disk, no permission): the model installed before stays where
    it was, nothing hidden in a .tmp-XXXXXXXX-replaced-MODEL folder; what a killed install left is cleared (its
    staging) or put back (a model it had moved aside) by the next install."""
    folder, _ = model
    assert export_main(["-m", str(folder), "-o", str(tmp_path / "model.zip")]) == 0
    monkeypatch.setenv("PIRL_results", str(tmp_path / "res"))
    assert install_main([str(tmp_path / "model.zip")]) == 0
    installed = tmp_path / "res" / PREFIX
    (installed / "mine.txt").write_text("the user's installed model")
    rename = Path.rename

    def failing(self, target):
        if self.name.endswith("-install"):
            raise OSError(13, "Permission denied")
        return rename(self, target)
    monkeypatch.setattr(Path, "rename", failing)
    assert install_main([str(tmp_path / "model.zip"), "--overwrite"]) == 2
    assert "write failed: permission denied; nothing was installed" in capsys.readouterr().err
    monkeypatch.setattr(Path, "rename", rename)
    assert (installed / "mine.txt").is_file() and [p.name for p in installed.parent.iterdir()] == [installed.name]
    # a killed install: its staging folder, and the model it had moved aside before the new one was in place
    (installed.parent / ".tmp-0123abcd-install").mkdir()
    installed.rename(installed.with_name(f".tmp-89abcdef-replaced-{installed.name}"))
    assert install_main([str(tmp_path / "model.zip")]) == 2  # put back first: an installed model, no --overwrite
    assert "a model is installed there already" in capsys.readouterr().err
    assert (installed / "mine.txt").is_file() and [p.name for p in installed.parent.iterdir()] == [installed.name]


def _crafted_zip(path: Path, source: Path, extra: zipfile.ZipInfo | None = None, payload: bytes = b"x",
                 checkpoint: bytes | None = None) -> Path:
    """The exported zip, one entry added (``extra``) or the checkpoint replaced (``checkpoint``)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if checkpoint is not None and info.filename.endswith(".pth"):
                data = checkpoint
            dst.writestr(info, data)
        if extra is not None:
            dst.writestr(extra, payload)
    return path


def _link(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("entry, reason", [
    (zipfile.ZipInfo("../evil.txt"), "'..'"),
    (zipfile.ZipInfo(f"{PREFIX}/../../../evil.txt"), "'..'"),
    (zipfile.ZipInfo("/tmp/evil.txt"), "absolute path"),
    (zipfile.ZipInfo(f"{PREFIX}\\..\\evil.txt"), "backslash"),
    (_link(f"{PREFIX}/fold_0/link"), "a link"),
    (zipfile.ZipInfo("Dataset952_Other/Trainer__P__C/x.txt"), "one DatasetXXX_Name/TRAINER__PLANS__CONFIG/ folder"),
])
def test_install_refuses_entries_outside_the_model_folder(model, tmp_path, monkeypatch, capsys, entry, reason):
    folder, _ = model
    assert export_main(["-m", str(folder), "-o", str(tmp_path / "model.zip")]) == 0
    crafted = _crafted_zip(tmp_path / "crafted.zip", tmp_path / "model.zip", entry, payload=b"/etc/passwd")
    results = tmp_path / "deep" / "res"
    monkeypatch.setenv("PIRL_results", str(results))
    assert install_main([str(crafted)]) == 2
    assert reason in capsys.readouterr().err
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".zip"]
    assert written == [] and not (results / PREFIX).exists()


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_install_loads_checkpoints_with_weights_only(model, tmp_path, monkeypatch, capsys):
    folder, _ = model
    assert export_main(["-m", str(folder), "-o", str(tmp_path / "model.zip")]) == 0
    marker = tmp_path / "code_ran"
    buffer = io.BytesIO()
    torch.save({"network_weights": _RunsCode(marker), "trainer_name": "x", "network_kwargs": {}, "config": {},
                "plans": {}, "epoch": 0}, buffer)
    crafted = _crafted_zip(tmp_path / "crafted.zip", tmp_path / "model.zip", checkpoint=buffer.getvalue())
    monkeypatch.setenv("PIRL_results", str(tmp_path / "res"))
    assert install_main([str(crafted)]) == 2
    assert "holds Python objects other than tensors; refused" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "res" / PREFIX).exists()


def test_swinunetr_export_loads_into_plain_monai_without_pirl(model, tmp_path):
    folder, network = model
    out = tmp_path / "swinunetr.pth"
    assert export_main(["-m", str(folder), "-o", str(out), "--swinunetr"]) == 0
    weights = torch.load(out, weights_only=True)
    expected = network.to_swinunetr_state_dict()
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k].cpu()) for k in weights)
    meta = json.loads(out.with_name("swinunetr.pth.json").read_text())
    assert meta["kwargs"]["in_channels"] == 2 and meta["kwargs"]["feature_size"] == 12
    # -I -S: no site processing, so neither the repository nor pirl's editable install is importable
    script = (f"import sys, json, importlib.util; sys.path.append({sysconfig.get_paths()['purelib']!r})\n"
              "assert importlib.util.find_spec('pirl_pipeline') is None and importlib.util.find_spec('plans') is None\n"
              "import torch; from monai.networks.nets import SwinUNETR\n"
              f"meta = json.load(open({str(out) + '.json'!r}))\n"
              f"net = SwinUNETR(**meta['kwargs']); net.load_state_dict(torch.load({str(out)!r}, weights_only=True), "
              "strict=True)\nprint('loaded', len(net.state_dict()))")
    result = subprocess.run([sys.executable, "-I", "-S", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"loaded {len(expected)}"
