"""The README cannot rot.

- The quickstart runs as written: ``quads-serve`` with no configuration, from another working
  directory, serves the shipped 4-bit model; espeak-ng's default voice (never used in training)
  says "turn on the lights"; curl gets the intent, and the JSON shown in the README is that answer.
- Every other ``curl`` line runs against that server, and shown answers match the real ones.
- Every other command is either run by ``.ci/run`` (the install, test-setup, lint and
  test-command blocks), run here, or parsed by the very tool it calls (training runs last an hour; their
  argument lists are checked by the tools' own parsers, and small runs of the same tools are in
  tests/training/test_e2e_training.py). A command this file does not know fails the test.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.live_server import Server, free_port, serve_command

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
DEFAULT_MODEL = REPO / "models" / "quads-fsc-4bit.safetensors"
CI_BLOCKS = ("install", "test-setup", "lint", "test-command")
COMMAND_WORDS = {
    "quads-serve",
    "quads-train",
    "quads-synth",
    "quads-eval",
    "quads-demo",
    "torchrun",
    "python",
    "python3",
    "pip",
    "curl",
    "espeak-ng",
    "docker",
    "kubectl",
    "sudo",
    "ruff",
}


def marked(name: str) -> str:
    """The text between ``<!-- name -->`` and ``<!-- /name -->``, code fences removed."""
    match = re.search(rf"<!-- {re.escape(name)} -->\n(.*?)<!-- /{re.escape(name)} -->", README, re.S)
    assert match, f"README.md has no <!-- {name} --> block"
    return "\n".join(line for line in match.group(1).splitlines() if not line.startswith("```"))


def commands(script: str) -> list[list[str]]:
    """Shell lines as argument lists: continuations joined, comments and a trailing ``&`` dropped;
    ``a && b`` gives two commands."""
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        while tokens:
            cut = tokens.index("&&") if "&&" in tokens else len(tokens)
            command = [t for t in tokens[:cut] if t != "&"]
            if command:
                out.append(command)
            tokens = tokens[cut + 1 :]
    return out


def readme_commands() -> list[list[str]]:
    """Every command in the README: the lines of its bash blocks and inline code that starts with a command."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        found += commands(block)
    for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", README):
        if span.split()[0] in COMMAND_WORDS and len(span.split()) > 1:  # `quads-serve` alone names the tool
            found += commands(span)
    return found


def json_after(marker: str) -> dict:
    """The first ```json block after ``marker`` in the README."""
    match = re.search(re.escape(marker) + r".*?```json\n(.*?)```", README, re.S)
    assert match, f"no JSON example after {marker!r}"
    return json.loads(match.group(1))


# --------------------------------------------------------------------------- the quickstart


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The quickstart's server, started as the README says, plus the folder it ran from."""
    if not DEFAULT_MODEL.exists():
        pytest.fail(f"{DEFAULT_MODEL.relative_to(REPO)} is missing: the README's quickstart serves it")
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed (the README's install block installs it)")
    serve, *rest = commands(marked("quickstart"))
    assert serve == ["quads-serve"], "the quickstart starts quads-serve with no configuration"
    workdir = tmp_path_factory.mktemp("quickstart")  # not the repo: the default model must be found anyway
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUADS_")}
    log = workdir / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*serve_command(), "--port", str(port)], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"quads-serve exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"quads-serve was not ready:\n{log.read_text()}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield {"port": port, "workdir": workdir, "rest": rest}
    finally:
        process.terminate()
        process.wait(timeout=30)


def run_here(command: list[str], quickstart: dict) -> str:
    """Run a README command in the quickstart folder, with ``localhost:8000`` pointed at its server."""
    if command[0] == "curl" and not shutil.which("curl"):
        pytest.skip("curl is not installed (the README's install block installs it)")
    argv = [re.sub(r"^(https?://)?localhost:8000", f"http://127.0.0.1:{quickstart['port']}", a) for a in command]
    argv = [a.replace("@README.md", f"@{REPO / 'README.md'}") for a in argv]
    result = subprocess.run(argv, cwd=quickstart["workdir"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{shlex.join(command)} failed:\n{result.stderr}"
    return result.stdout


def test_quickstart_classifies_an_unseen_voice_and_the_readme_shows_the_real_answer(quickstart):
    from training.corpus.espeak_voices import default_voices
    from training.experiments.demo import PRESETS

    say, send = quickstart["rest"]
    assert say[0] == "espeak-ng" and not any(a.startswith("-v") for a in say), "espeak-ng's default voice"
    trained = {v for split in default_voices(PRESETS["full"].voices, 0).values() for v in split}
    assert all("+" in v for v in trained), "every demo voice is an accent+variant, never the plain default voice"
    run_here(say, quickstart)
    answer = json.loads(run_here(send, quickstart))
    assert answer["intent"] == "activate_lights_none"
    assert answer["model"]["name"] == "quads-fsc-4bit" and answer["model"]["bits"] == 4

    shown = json.loads(marked("quickstart-answer").strip())
    assert shown.keys() == answer.keys()
    assert shown["intent"] == answer["intent"] and shown["model"] == answer["model"]
    assert shown["audio_seconds"] == pytest.approx(answer["audio_seconds"], abs=0.01)
    assert shown["confidence"] == pytest.approx(answer["confidence"], abs=0.05)
    assert [k["intent"] for k in shown["top_k"]] == [k["intent"] for k in answer["top_k"]]


def test_every_curl_line_in_the_readme_works(quickstart):
    run_here(commands(marked("quickstart"))[1], quickstart)  # makes turn_on_the_lights.wav
    for command in readme_commands():
        if command[0] != "curl" or command in commands(marked("own-commands")):  # that one has its own server
            continue
        out = run_here(command, quickstart)
        if "@README.md" in shlex.join(command):  # the error example
            shown = json_after(shlex.join(command).replace("'", ""))
            problem = json.loads(out)
            assert {k: problem[k] for k in ("type", "title", "status", "instance")} == {
                k: shown[k] for k in ("type", "title", "status", "instance")
            }
            assert problem.keys() == shown.keys()  # request_id included; its value is new each time
        elif "/intent" in shlex.join(command):
            assert json.loads(out).get("intent") == "activate_lights_none", f"{shlex.join(command)}: {out}"


# ------------------------------------------------------------------ your own commands


def test_the_own_commands_section_builds_serves_and_shows_the_real_answer(tmp_path, monkeypatch):
    """The build's arguments parse (it takes 25 minutes: the model it wrote is shipped in models/),
    and that model, served as the README says, gives the answer the README shows."""
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed (the README's install block installs it)")
    build, serve, say, send = commands(marked("own-commands"))
    check_training_cli(build, monkeypatch)
    built = Path(build[build.index("--out") + 1]) / "model" / "quads-media-player-4bit.safetensors"
    assert serve[0] == f"QUADS_MODEL={built}" and serve[1] == "quads-serve"
    shipped = REPO / "models" / built.name
    server = Server(tmp_path / "server.log", QUADS_MODEL=str(shipped), QUADS_PRECISION="auto")
    try:
        server.wait_ready()
        subprocess.run(say, cwd=tmp_path, check=True, timeout=60)
        port = serve[serve.index("--port") + 1]
        argv = [a.replace(f"localhost:{port}", f"127.0.0.1:{server.port}") for a in send]
        answer = json.loads(
            subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=True, timeout=60).stdout
        )
    finally:
        server.stop()
    shown = json.loads(marked("own-commands-answer").strip())
    assert {k: answer[k] for k in ("understood", "intent", "slots")} == {
        k: shown[k] for k in ("understood", "intent", "slots")
    }
    assert answer["confidence"] == pytest.approx(shown["confidence"], abs=0.05)
    assert answer["model"]["name"] == shown["model"]["name"] == built.stem


# ------------------------------------------------------------------ every other command


class Parsed(Exception):
    """Raised instead of running the tool: its parser accepted the arguments."""

    def __init__(self, namespace: argparse.Namespace):
        self.namespace = namespace


def parse_with(main, argv: list[str], monkeypatch) -> argparse.Namespace:
    """Call a CLI entry point, but stop it right after ``parse_args``: the arguments are valid or it exits 2."""
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    try:
        main(argv)
    except Parsed as parsed:
        return parsed.namespace
    finally:
        monkeypatch.undo()
    raise AssertionError(f"{argv} never reached parse_args")


def check_training_cli(command: list[str], monkeypatch) -> None:
    from training.corpus.synth_cli import cli as synth
    from training.eval_cli import cli as evaluate
    from training.experiments.demo import cli as demo
    from training.train_cli import cli as train
    from training.train_cli import config_from_args

    if command[0] == "torchrun":
        assert command[command.index("-m") + 1] == "training.train_cli"
        command = ["quads-train", *command[command.index("-m") + 2 :]]
    tool = {"quads-train": train, "quads-eval": evaluate, "quads-synth": synth, "quads-demo": demo}[command[0]]
    namespace = parse_with(tool, command[1:], monkeypatch)
    if command[0] == "quads-train":
        config_from_args(namespace).check()  # types and keys when loaded; strategy/bits/schedule rules here


def check_python(command: list[str], monkeypatch) -> None:
    if command[1:3] == ["-m", "training.experiments.table2"]:  # the Table 2 analog: its arguments parse
        from training.experiments.table2 import cli as table2

        parse_with(table2, command[3:], monkeypatch)
        return
    if command[1] == "-m" and command[2].startswith("bench."):  # a benchmark: its arguments parse
        module = importlib.import_module(command[2])
        parse_with(module.main, command[3:], monkeypatch)
        return
    if command[1] == "-m":
        assert command[2:] == ["pytest", "-q"], "the only other python -m command is the test command"
        return
    if command[1] == "-c":  # the compute example: run it, and it prints the README's figures
        out = subprocess.run(
            [sys.executable, *command[1:]], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
        ).stdout
        real_length, padded = (float(x) for x in out.split())
        assert f"| {real_length:.2f} |" in README and f"| {padded:.2f} |" in README
        return
    script = REPO / command[1]
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    parse_with(module.main, command[2:], monkeypatch)


def check_deploy(command: list[str], monkeypatch) -> None:
    if command[0] == "docker":
        compose = REPO / command[command.index("-f") + 1]
        assert command[1:2] == ["compose"] and command[-2:] == ["up", "--build"] and compose.exists()
        if shutil.which("docker-compose"):  # validated in depth by tests/test_deploy.py
            subprocess.run(["docker-compose", "-f", str(compose), "config", "-q"], cwd=REPO, check=True, timeout=60)
    else:
        assert command[:3] == ["kubectl", "apply", "-k"]
        kustomization = (REPO / command[3] / "kustomization.yaml").read_text()
        resources = re.findall(r"^\s+- (\S+\.yaml)$", kustomization, re.M)
        assert resources and all((REPO / command[3] / r).exists() for r in resources)


def check_pip(command: list[str], monkeypatch) -> None:
    """Outside the CI blocks, pip appears only in the CPU-only install and with a real extra."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    if "--index-url" in command:  # the CPU wheels: from PyTorch's CPU index, pinned as pyproject.toml pins them
        assert command[command.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
        pins = [d for d in project["dependencies"] if d.startswith("torch")]
        assert sorted(c for c in command if c.startswith("torch")) == sorted(pins) and len(pins) == 2
        return
    target = command[-1]
    assert command[:2] == ["pip", "install"] and (target == "." or command[2:4] == ["-e", target]), command
    extras = target.partition("[")[2].rstrip("]")
    assert not extras or set(extras.split(",")) <= set(project["optional-dependencies"]), command


def check_ci(command: list[str], monkeypatch) -> None:
    raise AssertionError("install and test commands belong in the blocks .ci/run runs")


CHECKS = {
    "quads-train": check_training_cli,
    "quads-eval": check_training_cli,
    "quads-synth": check_training_cli,
    "quads-demo": check_training_cli,
    "torchrun": check_training_cli,
    "python": check_python,
    "docker": check_deploy,
    "kubectl": check_deploy,
    "pip": check_pip,
    "sudo": check_ci,
    "python3": check_ci,
}


def test_ci_runs_the_install_and_test_blocks():
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^for name in (.*); do$", ci, re.M).group(1).split() == list(CI_BLOCKS)
    function = re.search(r"^readme_block\(\) \{.*?^\}$", ci, re.M | re.S).group(0)
    for name in CI_BLOCKS:
        extracted = subprocess.run(
            ["bash", "-c", f"{function}\nreadme_block {name}"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
        expected = commands(marked(name))
        if os.getuid() == 0:  # root needs no sudo, and a bare CI image may not have it
            expected = [c[1:] if c[0] == "sudo" else c for c in expected]
        assert commands(extracted) == expected != []


def other_commands() -> list[list[str]]:
    """README commands that neither .ci/run, the quickstart tests nor the curl test run."""
    ran = [c for name in (*CI_BLOCKS, "quickstart", "own-commands") for c in commands(marked(name))]
    return [c for c in readme_commands() if c not in ran and c[0] != "curl"]


def test_the_readme_documents_more_than_ci_and_the_quickstart():
    assert len(other_commands()) >= 5 and {c[0] for c in other_commands()} >= {"quads-train", "docker", "kubectl"}


@pytest.mark.parametrize("command", other_commands(), ids=shlex.join)
def test_every_other_readme_command_is_checked(command, monkeypatch):
    assert command[0] in CHECKS, f"README command {shlex.join(command)!r} is run by no test: add it to {__name__}"
    CHECKS[command[0]](command, monkeypatch)


def test_the_api_schema_s_example_is_the_readme_s_answer():
    from service.api.schemas import IntentResponse

    understood, refused = IntentResponse.model_json_schema()["examples"]
    assert understood == json.loads(marked("quickstart-answer").strip())
    assert refused["understood"] is False and refused["intent"] is None
