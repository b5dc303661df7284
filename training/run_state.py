"""The resume state of a training run: one safetensors file, written atomically after every epoch.

It holds the student's weights, the optimizer's state, the quantizer's codebooks and cluster
labels, the learned width projection (if any), how many epochs of the plan are done, and the
history of per-epoch metrics. Tensors go in the safetensors body and everything else in its JSON
metadata, so loading it runs no code (no pickle). The file is replaced with a temp file + rename,
so a process killed at any moment leaves the previous complete state.

RNG state is not stored: each epoch reseeds from (seed, epoch) (see ``training.train``), which is
what makes a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from service.checkpoint import atomic_write

FORMAT = "quads-train-state"
FORMAT_VERSION = 1
# Test-only fault injection: seconds to wait after the temp file is written and before it is
# renamed, so that a test can SIGKILL the process in the middle of writing a state file.
WRITE_DELAY_ENV = "QUADS_TEST_WRITE_DELAY_S"


class RunStateError(ValueError):
    """The resume file is missing, unreadable or not a QUADS training state."""


@dataclass
class RunState:
    done: int  # epochs of the plan completed (over all branches)
    model: dict[str, Tensor]
    optimizer: dict | None = None  # torch optimizer state_dict
    quantizer: dict | None = None  # KMeansQuantizer.state_dict()
    projection: dict[str, Tensor] | None = None
    history: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # free-form JSON (e.g. the plan, for a sanity check)


def _cpu(t: Tensor) -> Tensor:
    return t.detach().to("cpu").contiguous().clone()


def _flatten(state: RunState) -> tuple[dict[str, Tensor], dict]:
    tensors = {f"model/{k}": _cpu(v) for k, v in state.model.items()}
    meta: dict = {"done": state.done, "history": state.history, "info": state.info}
    if state.projection is not None:
        tensors.update({f"projection/{k}": _cpu(v) for k, v in state.projection.items()})
        meta["projection"] = True
    if state.optimizer is not None:
        layout = {}
        for idx, entry in state.optimizer["state"].items():
            layout[str(idx)] = {}
            for key, value in entry.items():
                if isinstance(value, Tensor):
                    tensors[f"optimizer/{idx}/{key}"] = _cpu(value)
                    layout[str(idx)][key] = {"tensor": True}
                else:
                    layout[str(idx)][key] = {"value": value}
        meta["optimizer"] = {"param_groups": state.optimizer["param_groups"], "state": layout}
    if state.quantizer is not None:
        q = state.quantizer
        meta["quantizer"] = {"bits": q["bits"], "names": sorted(q["labels"])}
        label_dtype = torch.uint8 if q["bits"] <= 8 else torch.int32  # labels < 2**bits: keep the file small
        for name in q["labels"]:
            tensors[f"quantizer/centroids/{name}"] = _cpu(q["centroids"][name])
            tensors[f"quantizer/labels/{name}"] = _cpu(q["labels"][name]).to(label_dtype)
    return tensors, meta


def save_state(path: str | os.PathLike, state: RunState) -> Path:
    """Write ``state`` to ``path`` atomically."""
    tensors, meta = _flatten(state)
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "state": json.dumps(meta)}
    delay = float(os.environ.get(WRITE_DELAY_ENV, "0") or 0)

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=metadata)
        if delay:
            time.sleep(delay)

    path = Path(path)
    atomic_write(path, write)
    return path


def load_state(path: str | os.PathLike) -> RunState:
    """Read a state written by ``save_state``. Raises ``RunStateError``."""
    path = Path(path)
    if not path.is_file():
        raise RunStateError(f"{path}: no resume state here")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if metadata.get("format") != FORMAT or metadata.get("format_version") != str(FORMAT_VERSION):
            raise ValueError(f"format {metadata.get('format')!r} version {metadata.get('format_version')!r}")
        meta = json.loads(metadata["state"])
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as e:
        raise RunStateError(f"{path}: not a readable QUADS training state ({e})") from None

    def section(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    optimizer = None
    if "optimizer" in meta:
        opt_state = {}
        for idx, entry in meta["optimizer"]["state"].items():
            opt_state[int(idx)] = {
                key: tensors[f"optimizer/{idx}/{key}"] if spec.get("tensor") else spec["value"]
                for key, spec in entry.items()
            }
        optimizer = {"state": opt_state, "param_groups": meta["optimizer"]["param_groups"]}
    quantizer = None
    if "quantizer" in meta:
        q = meta["quantizer"]
        quantizer = {
            "bits": q["bits"],
            "centroids": {n: tensors[f"quantizer/centroids/{n}"] for n in q["names"]},
            "labels": {n: tensors[f"quantizer/labels/{n}"].long() for n in q["names"]},
        }
    return RunState(
        done=int(meta["done"]),
        model=section("model/"),
        optimizer=optimizer,
        quantizer=quantizer,
        projection=section("projection/") if meta.get("projection") else None,
        history=list(meta.get("history", [])),
        info=dict(meta.get("info", {})),
    )
