"""``python -m tests.slow_state_writes ARGS``: ``quads-train ARGS``, except that each resume state
file stays a temp file for a second after it is written, before its rename, so that a test can
SIGKILL training in the middle of writing one (tests/training/test_train_resume.py)."""

import sys
import time

import safetensors.torch

from training.train_cli import cli

_save_file = safetensors.torch.save_file


def _slow_save_file(tensors, filename, metadata=None):
    _save_file(tensors, filename, metadata=metadata)
    if "/.state.safetensors." in str(filename):
        time.sleep(1.0)


if __name__ == "__main__":
    safetensors.torch.save_file = _slow_save_file  # core.tensor_files.write_tensors imports it at each call
    sys.exit(cli())
