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


def test_training_commands_without_the_train_extra_say_how_to_get_it(monkeypatch):
    import importlib.util

    from training import commands

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "yaml" else real_find_spec(name, *a))
    for entry, command in ((commands.train, "quads-train"), (commands.evaluate, "quads-eval"),
                           (commands.synth, "quads-synth"), (commands.demo, "quads-demo")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            entry()
        assert str(exit_info.value) == (f"{command}: needs the training extra, which is not installed (missing: pyyaml); "
                                        "install it with: pip install 'quads[train]'")  # fmt: skip


def test_installed_commands_run(tmp_path):
    # The console scripts as pip wrote them (an editable install points at this tree).
    bin_dir = Path(sys.executable).parent
    for command in ("quads-serve", "quads-train", "quads-eval", "quads-synth", "quads-demo"):
        result = subprocess.run([str(bin_dir / command), "--version"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert result.returncode == 0 and result.stdout.strip() == f"{command} {package_version()}", result.stderr[-1000:]
