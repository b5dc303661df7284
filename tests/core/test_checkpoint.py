"""The packed checkpoint format: exact round-trips, real size savings, and refusal of bad files."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from core.model import WHISPER_TINY, IntentClassifier, ModelDims
from tests.pickle_payload import PicklePayload
from training.quantize import quantize_model

SMALL = ModelDims(n_mels=80, n_ctx=1500, n_state=64, n_head=4, n_layer=2)
LABELS = [f"intent_{i}" for i in range(5)]


def quantized(dims, bits, seed=0):
    torch.manual_seed(seed)
    model = IntentClassifier(dims, len(LABELS)).eval()
    quantize_model(model, bits)
    return model


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 16, 32])
def test_loaded_model_equals_the_saved_one(tmp_path, bits):
    model = quantized(SMALL, bits)
    path = save_checkpoint(tmp_path / "m.safetensors", model, LABELS, bits, provenance={"strategy": "test"})
    ck = load_checkpoint(path)
    assert ck.labels == LABELS and ck.bits == bits and ck.dims == SMALL and ck.provenance == {"strategy": "test"}
    assert len(ck.sha256) == 64 and ck.file_bytes == path.stat().st_size
    mel = torch.randn(2, 80, 123)
    with torch.no_grad():
        assert torch.equal(ck.model(mel)[1], model(mel)[1])
    for name, p in ck.model.named_parameters():
        if p.dim() > 1 and bits <= 8:
            assert p.unique().numel() <= 2**bits, name


def test_the_quantizer_s_own_codebooks_are_written_and_a_stale_one_is_refused(tmp_path):
    torch.manual_seed(0)
    model = IntentClassifier(SMALL, len(LABELS)).eval()
    quantizer = quantize_model(model, 3)
    path = save_checkpoint(tmp_path / "m.safetensors", model, LABELS, 3, codebooks=quantizer.codebooks())
    name = "encoder.blocks.0.mlp.0.weight"
    with safe_open(str(path), framework="pt") as f:
        torch.testing.assert_close(f.get_tensor(f"{name}.codebook"), quantizer.centroids[name].float(), rtol=0, atol=0)
    assert torch.equal(load_checkpoint(path).model.state_dict()[name], model.state_dict()[name])
    with torch.no_grad():
        quantizer.params[name].add_(0.01)  # the weights moved and the codebook did not follow
    with pytest.raises(ValueError, match=f"{name}: the codebook does not reproduce the weight"):
        save_checkpoint(tmp_path / "stale.safetensors", model, LABELS, 3, codebooks=quantizer.codebooks())
    assert not (tmp_path / "stale.safetensors").exists()


def test_unquantized_weights_are_refused_at_low_bit_widths(tmp_path):
    model = IntentClassifier(SMALL, len(LABELS))
    with pytest.raises(ValueError, match="distinct values, more than 2\\*\\*4"):
        save_checkpoint(tmp_path / "m.safetensors", model, LABELS, 4)
    assert not list(tmp_path.iterdir())  # nothing partial left behind


def test_whisper_tiny_files_shrink_with_bits(tmp_path):
    torch.manual_seed(0)
    model = IntentClassifier(WHISPER_TINY, 31).eval()
    sizes = {}
    for bits in (32, 8, 4):
        if bits < 32:
            quantize_model(model, bits, iters=2)
        sizes[bits] = (
            save_checkpoint(tmp_path / f"{bits}.safetensors", model, [str(i) for i in range(31)], bits).stat().st_size
        )
    assert sizes[4] <= 0.13 * sizes[32]
    assert sizes[8] <= 0.26 * sizes[32]


@pytest.fixture
def saved(tmp_path):
    return save_checkpoint(tmp_path / "m.safetensors", quantized(SMALL, 4), LABELS, 4)


def test_truncated_file_is_refused(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="m.safetensors: not a readable .safetensors file"):
        load_checkpoint(saved)


def rewrite(path, edit_tensors=None, edit_metadata=None):
    with safe_open(str(path), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    if edit_tensors:
        edit_tensors(tensors)
    if edit_metadata:
        edit_metadata(metadata)
    save_file(tensors, str(path), metadata=metadata)


def test_tampered_tensor_is_refused(saved):
    def flip(t):
        t["encoder.conv1.weight.codes"][0] ^= 0xFF

    rewrite(saved, edit_tensors=flip)
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        load_checkpoint(saved)


def test_metadata_inconsistent_with_tensors_is_refused(saved):
    from core import checkpoint as fmt

    def more_labels(m):  # a consistent hash but a label list that no longer fits the head
        m["labels"] = json.dumps(LABELS + ["extra"])
        m["content_sha256"] = fmt._content_hash(tensors_of(saved), m)

    rewrite(saved, edit_metadata=more_labels)
    with pytest.raises(CheckpointError, match="lists 6 labels but the head has 5 outputs"):
        load_checkpoint(saved)


def tensors_of(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_wrong_files_are_refused_with_their_name(tmp_path):
    with pytest.raises(CheckpointError, match="nope.safetensors: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.safetensors")
    torch.save({"x": torch.zeros(1)}, tmp_path / "pickled.safetensors")
    with pytest.raises(CheckpointError, match="PyTorch/pickle file, not a QUADS"):
        load_checkpoint(tmp_path / "pickled.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="format is None, expected 'quads-intent'"):
        load_checkpoint(tmp_path / "foreign.safetensors")


@pytest.mark.parametrize("name", ["evil.safetensors", "evil.pt", "evil.bin"])
def test_pickle_payload_is_never_executed(tmp_path, name):
    import pickle

    marker = tmp_path / "pwned"
    (tmp_path / name).write_bytes(pickle.dumps(PicklePayload(marker)))
    torch.save({"x": PicklePayload(marker)}, tmp_path / f"zip-{name}")
    for path in (tmp_path / name, tmp_path / f"zip-{name}"):
        with pytest.raises(CheckpointError, match="pickle file, not a QUADS"):
            load_checkpoint(path)
    assert not marker.exists()


def test_a_header_length_starting_with_a_pickle_byte_is_still_safetensors(tmp_path):
    """safetensors begins with its header length: when that starts with 0x80 it must not pass for a pickle."""
    model = IntentClassifier(ModelDims(n_mels=8, n_ctx=4, n_state=4, n_head=1, n_layer=1), 2)
    for pad in range(256):
        path = save_checkpoint(tmp_path / "m.safetensors", model, ["a", "b"], 32, provenance={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert load_checkpoint(path).provenance == {"pad": "x" * pad}


def test_garbage_file_is_refused(tmp_path):
    (tmp_path / "g.safetensors").write_bytes(b"hello world, not a model")
    with pytest.raises(CheckpointError, match="not a .safetensors file"):
        load_checkpoint(tmp_path / "g.safetensors")


def test_written_files_are_readable_by_others(tmp_path):
    """mkstemp makes 0600 files; a checkpoint must be readable by a service running as another user."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "m.safetensors", quantized(SMALL, 4), LABELS, 4)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_memory_counts_weights_that_serving_layers_hold_outside_parameters(tmp_path):
    from torch import nn
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    ck = load_checkpoint(save_checkpoint(tmp_path / "m.safetensors", quantized(SMALL, 32), LABELS, 32))
    linear_weights = sum(m.weight.numel() for m in ck.model.modules() if isinstance(m, nn.Linear))
    float32_bytes = 4 * sum(t.numel() for t in [*ck.model.parameters(), *ck.model.buffers()])
    assert ck.memory_bytes == float32_bytes

    # Dynamic int8: each linear weight becomes 1 byte per element (torch keeps it off parameters()).
    quantize_dynamic(ck.model, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
    assert ck.memory_bytes == float32_bytes - 3 * linear_weights

    class Packed(nn.Module):  # any layer with packed_tensors() is counted: core.checkpoint.HoldsPackedTensors
        def __init__(self):
            super().__init__()
            self.kept = torch.zeros(10, dtype=torch.bfloat16)

        def packed_tensors(self):
            return [self.kept]

    ck.model.extra = Packed()
    assert ck.memory_bytes == float32_bytes - 3 * linear_weights + 2 * 10
