"""pirl_reference writes pirl_predict-style folders that pirl_evaluate scores like a model's predictions."""
import numpy as np

from pirl_pipeline.cli.evaluate import main as evaluate_main
from pirl_pipeline.cli.reference import main as reference_main
from pirl_pipeline.data.image_io import read_array
from pirl_pipeline.file_io import load_json
from tests.synthetic import write_raw_dataset


def test_reference_folders_are_scored_by_pirl_evaluate(pirl_raw, tmp_path):
    raw = write_raw_dataset(pirl_raw, 941, "Ref", num_cases=3, channels={"0": "T1", "1": "FLAIR"})
    seg, tr = tmp_path / "seg_threshold", tmp_path / "translate_identity"
    assert reference_main(["-i", str(raw / "imagesTr"), "-o", str(seg), "-d", "941", "-t", "seg",
                           "--kind", "threshold"]) == 0
    assert load_json(seg / "reference.json")["channel"] == 1  # FLAIR, found by name
    assert evaluate_main(["-ref", str(raw / "labelsTr"), "-pred", str(seg), "-d", "941", "-t", "seg", "-np", "1"]) == 0
    assert "Dice" in load_json(seg / "summary.json")["mean"]["core"]
    assert reference_main(["-i", str(raw / "imagesTr"), "-o", str(tr), "-d", "941", "-t", "translate",
                           "--kind", "identity", "--source", "0"]) == 0
    copied, _ = read_array(tr / "case000_0001.nii.gz")
    source, _ = read_array(raw / "imagesTr" / "case000_0000.nii.gz")
    assert np.array_equal(copied, source) and not (tr / "case000_0000.nii.gz").exists()
    assert reference_main(["-i", str(raw / "imagesTr"), "-o", str(tr), "-d", "941", "-t", "seg",
                           "--kind", "identity"]) == 2  # a translation reference for seg: one-line error


def test_threshold_reads_a_flair_named_t2f(pirl_raw, tmp_path):
    """BraTS 2023 names FLAIR "t2f": the threshold reference fits on it, not on channel 0 (was: "flair" in the name)."""
    raw = write_raw_dataset(pirl_raw, 942, "RefT2f", num_cases=2, shape=(12, 14, 13), channels={"0": "T1", "1": "T2f"})
    seg = tmp_path / "seg_threshold"
    assert reference_main(["-i", str(raw / "imagesTr"), "-o", str(seg), "-d", "942", "-t", "seg",
                           "--kind", "threshold"]) == 0
    assert load_json(seg / "reference.json")["channel"] == 1
