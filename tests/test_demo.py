"""``python -m demo`` runs from the checkout but may work in any folder (``--workdir``), and it
empties only a folder that is empty, under the checkout's ``var/``, or made by an earlier demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from demo.__main__ import MARKER, fresh_workdir
from tests.support import ROOT


def test_the_demo_runs_in_a_folder_outside_the_checkout(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    assert not work.is_relative_to(ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "demo", "--workdir", str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"stills in {work / 'incoming/door'}" in result.stdout
    assert "=== secagent demo summary ===" in result.stdout
    assert "threat events     3" in result.stdout
    assert (work / "secagg.sqlite").is_file()
    assert len(list((work / "mail").glob("*.eml"))) == 3
    assert (work / MARKER).is_file()


def test_a_folder_the_demo_did_not_make_is_not_emptied(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="is not empty and no demo made it"):
        fresh_workdir(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_a_folder_an_earlier_demo_made_is_emptied(tmp_path: Path) -> None:
    work = fresh_workdir(tmp_path / "a" / ".." / "demo")
    assert work == (tmp_path / "demo").resolve()
    (work / "secagg.sqlite").write_text("old run")
    assert fresh_workdir(work) == work
    assert sorted(p.name for p in work.iterdir()) == [MARKER]
