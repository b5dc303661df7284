"""Bit widths and codebooks (``core.codebook``): one supported set, dense LSB-first packing."""

import math

import pytest
import torch

from core.codebook import (
    SUPPORTED_BITS,
    Codebook,
    check_bits,
    pack_codes,
    packed_size,
    storage,
    unpack_codes,
)
from core.model import IntentClassifier, ModelDims
from training.config import ConfigError, load_config
from training.quantize import KMeansQuantizer


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [1, 7, 8, 1001])
def test_pack_unpack_round_trips_exactly(bits, count):
    codes = torch.randint(0, 2**bits, (count,))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(count * bits / 8) == packed_size(count, bits)
    assert torch.equal(unpack_codes(packed, bits, count), codes)


def test_packing_is_dense_lsb_first():
    assert pack_codes(torch.tensor([1, 0, 1, 1]), 2).tolist() == [0b01_01_00_01]
    assert pack_codes(torch.tensor([1, 1, 1]), 3).tolist() == [0b01_001_001, 0b0000000_0]


def test_storage_of_each_width():
    assert [storage(b) for b in SUPPORTED_BITS] == ["codebook"] * 8 + ["float16", "float32"]


@pytest.mark.parametrize("bits", [0, 9, 12, 15, 17, 64])
def test_unsupported_widths_are_refused_everywhere_with_the_supported_list(bits):
    with pytest.raises(ValueError, match=r"must be one of \[1, 2, 3, 4, 5, 6, 7, 8, 16, 32\]"):
        check_bits(bits)
    model = IntentClassifier(ModelDims(n_mels=8, n_ctx=16, n_state=8, n_head=2, n_layer=1), 2)
    with pytest.raises(ValueError, match="must be one of"):
        KMeansQuantizer(model, bits)
    with pytest.raises(ConfigError, match="not supported"):
        load_config(
            None, [{"data": {"root": "/d"}, "train": {"bits": [bits], "strategy": "mct"}, "teacher": {"path": "t"}}]
        )


def test_a_codebook_checks_its_size_and_rebuilds_its_weight():
    weight = torch.tensor([[0.5, -1.0], [0.5, 2.0]])
    codebook = Codebook.of_snapped(weight, 2)
    assert codebook.centroids.tolist() == [-1.0, 0.5, 2.0, 2.0]  # the unused slot repeats the largest value
    assert torch.equal(codebook.weight(weight.shape), weight)
    with pytest.raises(ValueError, match="need \\(4,\\)"):
        Codebook(torch.zeros(3), torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="more than 2\\*\\*1"):
        Codebook.of_snapped(weight, 1)
