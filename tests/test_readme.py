"""The README's promises: its two commands exist, and its code examples run as written."""
import re

import pytest

from conftest import ROOT

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_commands_are_make_targets_and_ci_runs_the_test_command():
    assert "make install && make ablate" in README and "make test" in README
    makefile = (ROOT / "Makefile").read_text()
    for target in ("install", "ablate", "test", "ui", "report", "bench", "data", "train"):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
    assert "torch==2.13.0" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_has_the_three_examples():
    assert len(BLOCKS) == 3
    assert "tune.run(" in BLOCKS[0] and "tune.Tuner(" in BLOCKS[1] and "train(TrainConfig(" in BLOCKS[2]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs_as_written(index, ray_session, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), namespace)
    out = capsys.readouterr().out
    if index == 0:
        assert len(namespace["analysis"].trials) == 2
        assert all(t.status == "TERMINATED" for t in namespace["analysis"].trials)
        assert "test_force_loss" in out
    elif index == 1:
        df = namespace["results"].get_dataframe()
        assert len(df) == 8 and not namespace["results"].errors
        assert set(df["config/arm"]) == {"irelu+DN+LR", "irelu+DN", "irelu+LR", "irelu"}
        assert (df["test_force_loss"] > 0).all()
    else:
        assert "'test_force_loss'" in out
