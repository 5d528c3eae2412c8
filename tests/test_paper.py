"""docs/paper.md's tables are redrawn from the committed logs by docs/redraw.sh, as committed."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


@pytest.mark.slow  # reads every committed event file and draws the figures
def test_redraw_makes_the_committed_tables_from_the_committed_logs(tmp_path):
    shutil.copytree(REPO / "results", tmp_path / "results")
    (tmp_path / "docs").mkdir()
    shutil.copy(REPO / "docs" / "redraw.sh", tmp_path / "docs")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    done = subprocess.run(["bash", "docs/redraw.sh"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    tables = sorted(p.name for p in (tmp_path / "docs").glob("*.md"))
    assert "degradation_seeds.md" in tables
    for name in tables:  # what the page shows is what the logs give
        assert (tmp_path / "docs" / name).read_text() == (REPO / "docs" / name).read_text(), name
        assert (tmp_path / "docs" / name.replace(".md", ".png")).stat().st_size > 10_000
