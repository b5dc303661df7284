"""Console-script entry points of the training commands.

Each checks that the ``train`` extra is installed before importing its command, so that a
service-only install (``pip install quads``, as in the Docker image) answers ``quads-train``
with how to get it, not with a ``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

# import name -> distribution, for the modules the train extra adds
TRAIN_EXTRA = {"tqdm": "tqdm", "yaml": "pyyaml", "matplotlib": "matplotlib", "hassil": "hassil"}


def missing_train_extra() -> list[str]:
    return [dist for module, dist in TRAIN_EXTRA.items() if importlib.util.find_spec(module) is None]


def _run(command: str, module: str) -> int | None:
    if missing := missing_train_extra():
        sys.exit(
            f"{command}: needs the training extra, which is not installed (missing: {', '.join(missing)}); "
            "install it with: pip install 'quads[train]'"
        )
    return importlib.import_module(module).cli()


def train() -> int | None:
    return _run("quads-train", "training.train_cli")


def evaluate() -> int | None:
    return _run("quads-eval", "training.eval_cli")


def synth() -> int | None:
    return _run("quads-synth", "training.corpus.synth_cli")


def demo() -> int | None:
    return _run("quads-demo", "training.experiments.demo")
