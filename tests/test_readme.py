"""The README's "Use from Python" snippet runs as written (on MNIST, a quick run)."""

import os
import runpy

import pytest
from test_extend import readme_block


@pytest.mark.slow
def test_use_from_python_runs(tmp_path, mnist_dir, capsys, monkeypatch):
    script = tmp_path / "snippet.py"
    script.write_text(readme_block("Use from Python"))
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script))
    out = capsys.readouterr().out
    assert os.path.isfile(tmp_path / "runs" / "quick" / "eval.json")
    assert "Evaluation of runs/quick" in out
