"""Every console script answers --help (exit 0) and is declared in setup.py."""
import importlib
import re
from pathlib import Path

import pytest

SETUP = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
SCRIPTS = re.findall(r'"(pirl_\w+)=([\w.]+):(\w+)"', SETUP)


def test_every_command_is_declared():
    names = {name for name, _, _ in SCRIPTS}
    assert {"pirl_plan_and_preprocess", "pirl_train", "pirl_predict", "pirl_evaluate", "pirl_evaluate_missing",
            "pirl_report", "pirl_demo", "pirl_convert_brats", "pirl_convert_autopet", "pirl_convert_folder",
            "pirl_make_demo_dataset"} <= names


@pytest.mark.parametrize("name, module, function", SCRIPTS)
def test_help(name, module, function, capsys):
    main = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
