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
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from core.tensor_files import read_tensors, write_tensors

FORMAT = "quads-train-state"
FORMAT_VERSION = 1


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
        label_dtype = torch.uint8  # codes < 2**bits <= 256: keep the file small
        for name in q["labels"]:
            tensors[f"quantizer/centroids/{name}"] = _cpu(q["centroids"][name])
            tensors[f"quantizer/labels/{name}"] = _cpu(q["labels"][name]).to(label_dtype)
        if q.get("latent"):  # a straight-through phase's float weights
            meta["quantizer"]["latent"] = True
            tensors.update({f"quantizer/latent/{n}": _cpu(t) for n, t in q["latent"].items()})
    return tensors, meta


def save_state(path: str | os.PathLike, state: RunState) -> Path:
    """Write ``state`` to ``path`` atomically."""
    tensors, meta = _flatten(state)
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "state": json.dumps(meta)}
    path = Path(path)
    write_tensors(path, tensors, metadata)
    return path


def load_state(path: str | os.PathLike) -> RunState:
    """Read a state written by ``save_state``. Raises ``RunStateError``."""
    path = Path(path)
    if not path.is_file():
        raise RunStateError(f"{path}: no resume state here")
    try:
        tensors, metadata = read_tensors(path)
        if metadata.get("format") != FORMAT or metadata.get("format_version") != str(FORMAT_VERSION):
            raise ValueError(f"format {metadata.get('format')!r} version {metadata.get('format_version')!r}")
        meta = json.loads(metadata["state"])
    except (ValueError, KeyError) as e:  # TensorFileError is a ValueError
        raise RunStateError(f"{path}: not a readable QUADS training state ({e})") from None

    def section(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

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
        if q.get("latent"):
            quantizer["latent"] = {n: tensors[f"quantizer/latent/{n}"] for n in q["names"]}
    return RunState(
        done=int(meta["done"]),
        model=section("model/"),
        optimizer=optimizer,
        quantizer=quantizer,
        projection=section("projection/") if meta.get("projection") else None,
        history=list(meta.get("history", [])),
        info=dict(meta.get("info", {})),
    )
