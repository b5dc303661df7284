"""The package as users install it: licence metadata in the built wheel, and --version on every command."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from core.version import package_version

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_declares_the_mit_licence_and_ships_its_text(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("quads-*.whl")
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        licences = [n for n in z.namelist() if n.endswith("/LICENSE")]
    assert "License-Expression: MIT" in metadata
    assert "Classifier: Topic :: Multimedia :: Sound/Audio :: Speech" in metadata
    assert licences and "Permission is hereby granted" in zipfile.ZipFile(wheel).read(licences[0]).decode()


@pytest.mark.parametrize(
    "module",
    [
        "service.cli",
        "training.train_cli",
        "training.eval_cli",
        "training.corpus.synth_cli",
        "training.experiments.demo",
    ],
)
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
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "yaml" else real_find_spec(name, *a)
    )
    for entry, command in (
        (commands.train, "quads-train"),
        (commands.evaluate, "quads-eval"),
        (commands.synth, "quads-synth"),
        (commands.demo, "quads-demo"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            entry()
        assert str(exit_info.value) == (
            f"{command}: needs the training extra, which is not installed (missing: pyyaml); "
            "install it with: pip install 'quads[train]'"
        )


def test_installed_commands_run(tmp_path):
    # The console scripts as pip wrote them (an editable install points at this tree).
    bin_dir = Path(sys.executable).parent
    for command in ("quads-serve", "quads-train", "quads-eval", "quads-synth", "quads-demo"):
        result = subprocess.run(
            [str(bin_dir / command), "--version"], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert result.returncode == 0 and result.stdout.strip() == f"{command} {package_version()}", result.stderr[
            -1000:
        ]


@pytest.mark.slow
def test_a_built_wheel_serves_the_default_model_from_any_folder(tmp_path):
    import shutil
    import socket
    import time

    import httpx

    from tests.speech import espeak_wav_bytes

    # Build from a copy, so that the build leaves nothing in the working tree.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    for name in ("core", "service", "training", "models"):
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("quads-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {f"service/models/quads-fsc-{bits}bit.safetensors" for bits in (4, 8, 3, 2)}
        assert shipped <= set(z.namelist())

    # Installed alone (its dependencies come from this environment), run from an unrelated folder.
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = "import sys; from service.cli import cli; sys.exit(cli())"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("QUADS_")}
    env["PYTHONPATH"] = str(target)  # the wheel's service package, not this checkout's
    server = subprocess.Popen(
        [sys.executable, "-c", code, "--port", str(port)],
        cwd=elsewhere,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stdout.read()[-3000:]
            time.sleep(0.3)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/model", timeout=5).json()["bits"] == 4
        if shutil.which("espeak-ng"):
            answer = httpx.post(
                f"http://127.0.0.1:{port}/intent",
                files={"file": ("a.wav", espeak_wav_bytes("turn on the lights"))},
                timeout=30,
            ).json()
            assert answer["intent"] == "activate_lights_none"
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
    assert f"serving {target / 'service' / 'models' / 'quads-fsc-4bit.safetensors'}" in log, log[-3000:]


# Runs a console script's function with the given arguments and prints whether torch was imported.
_ENTRY_POINT_WATCH = """
import sys
module, function = sys.argv.pop(1).split(":")
entry = getattr(__import__(module, fromlist=[function]), function)
try:
    entry()
except SystemExit:
    pass
print("torch loaded" if "torch" in sys.modules else "no torch")
"""


@pytest.mark.parametrize("command", ["quads-serve", "quads-train", "quads-eval", "quads-synth", "quads-demo"])
@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_answer_without_loading_torch(command, flag):
    """torch takes over a second to import; --help and --version never wait for it."""
    entry = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"][command]
    result = subprocess.run(
        [sys.executable, "-c", _ENTRY_POINT_WATCH, entry, flag], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.stdout.strip().endswith("no torch"), result.stdout[-500:] + result.stderr[-2000:]
    assert command in result.stdout
