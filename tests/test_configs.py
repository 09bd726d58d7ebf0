"""Every shipped YAML config opens with a comment saying what it is for and the command that runs it, and loads."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted([*ROOT.glob("sweeps/*.yaml"), *ROOT.glob("modelfiles/*.yaml"), *ROOT.glob("toolkit/train/recipes/*.yaml")])


def test_there_are_configs_in_every_folder():
    folders = {p.parent.name for p in SHIPPED}
    assert {"sweeps", "modelfiles", "recipes"} <= folders


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_opens_with_purpose_and_command_and_loads(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    assert header and len(header[0]) > 10, "the first line says what the file is for"
    assert any("toolkit " in line or "make " in line for line in header), "the header names the command that runs it"
    if path.parent.name == "sweeps":
        from toolkit.evaluate.sweep.config import load_sweep

        assert load_sweep(path).space
    elif path.parent.name == "modelfiles":
        from toolkit.params import load_parameters

        assert load_parameters(path).max_tokens > 0
    elif path.name == "search-space.yaml":
        from toolkit.train.search import load_space

        assert load_space(path)
    else:
        from toolkit.train.config import load_config

        assert load_config(path).r > 0
