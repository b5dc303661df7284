"""The package as users install it: licence metadata in the built wheel, and --version on every command."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from service.version import package_version

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_declares_the_mit_licence_and_ships_its_text(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(REPO)],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("quads-*.whl")
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        licences = [n for n in z.namelist() if n.endswith("/LICENSE")]
    assert "License-Expression: MIT" in metadata
    assert "Classifier: Topic :: Multimedia :: Sound/Audio :: Speech" in metadata
    assert licences and "Permission is hereby granted" in zipfile.ZipFile(wheel).read(licences[0]).decode()


@pytest.mark.parametrize("module", ["service.main", "training.train", "training.evaluate", "training.synth", "training.demo"])
def test_every_command_answers_version(module, capsys):
    cli = __import__(module, fromlist=["cli"]).cli
    with pytest.raises(SystemExit) as exit_info:
        cli(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("quads-") and out.strip().endswith(package_version())
    assert package_version() != "unknown"  # the tests run against an installed package
