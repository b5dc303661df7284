"""CTranslate2 (faster-whisper) Whisper directories, checked against CTranslate2 itself.

Tiny random Whisper models are made with transformers and converted by CTranslate2's own
converter, at every quantization it offers; our encoder must give what
``ctranslate2.models.Whisper.encode`` gives on the same features.
"""

import json
import struct

import numpy as np
import pytest
import torch

ctranslate2 = pytest.importorskip("ctranslate2")
from transformers import (  # noqa: E402
    WhisperConfig,
    WhisperForConditionalGeneration,
    WhisperTokenizer,
)

from training.whisper import WhisperImportError, load_whisper_encoder  # noqa: E402

QUANTIZATIONS = [None, "float16", "bfloat16", "int8", "int16"]
# Our float32 encoder against the HF source model: the error the storage format itself adds
# (float16 and int16 keep ~3-4 significant digits; bfloat16 ~2-3; int8 one part in 127 per row).
SOURCE_TOLERANCE = {None: 1e-4, "float16": 5e-3, "bfloat16": 3e-2, "int8": 3e-2, "int16": 5e-3}


@pytest.fixture(scope="module")
def hf_whisper(tmp_path_factory):
    """A random 2-layer Whisper (d=64, 4 heads) with a toy tokenizer, as transformers saves it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hf-whisper")
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|transcribe|>", "<|notimestamps|>"]
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(specials + list("abcdefgh"))}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    config = WhisperConfig(
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=96,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=96,
        vocab_size=64,
        max_source_positions=1500,
        max_target_positions=8,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        decoder_start_token_id=1,
    )
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # LayerNorms and biases start at 1/0: randomise them so a mis-mapped one shows.
        for p in model.model.encoder.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    WhisperTokenizer(str(path / "vocab.json"), str(path / "merges.txt")).save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def ct2_dirs(hf_whisper, tmp_path_factory):
    source, _ = hf_whisper
    root = tmp_path_factory.mktemp("ct2")
    dirs = {}
    for q in QUANTIZATIONS:
        dirs[q] = root / f"ct2-{q or 'float32'}"
        ctranslate2.converters.TransformersConverter(str(source)).convert(str(dirs[q]), quantization=q)
    return dirs


def ct2_encode(directory, mel: torch.Tensor) -> torch.Tensor:
    # compute_type float32: CTranslate2 dequantizes the stored weights as we do, so any difference
    # left is the import's, not the arithmetic's.
    model = ctranslate2.models.Whisper(str(directory), device="cpu", compute_type="float32")
    return torch.from_numpy(
        np.array(model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.numpy())), to_cpu=True))
    )


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_ct2_encoder_matches_ctranslate2(ct2_dirs, hf_whisper, quantization):
    directory = ct2_dirs[quantization]
    ours = load_whisper_encoder(directory)
    assert (ours.dims.n_state, ours.dims.n_head, ours.dims.n_layer, ours.dims.n_mlp) == (64, 4, 2, 96)
    mel = torch.randn(1, 80, 3000)
    with torch.no_grad():
        got, _ = ours(mel)
        source = hf_whisper[1].model.encoder(mel).last_hidden_state
    assert (got - ct2_encode(directory, mel)).abs().max().item() < 1e-4
    assert (got - source).abs().max().item() < SOURCE_TOLERANCE[quantization]

    short = mel[:, :, :300]  # 3 s: CTranslate2 also runs short inputs, slicing its positions
    with torch.no_grad():
        got, _ = ours(short)
    assert got.shape == (1, 150, 64)
    assert (got - ct2_encode(directory, short)).abs().max().item() < 1e-4


def test_ct2_directory_accepted_as_teacher_and_init(ct2_dirs):
    from training.student import copy_teacher_layers
    from training.teacher import load_teacher

    teacher = load_teacher(ct2_dirs["int8"])
    assert teacher.width == 64
    student = load_whisper_encoder(ct2_dirs[None])
    assert copy_teacher_layers(student, teacher.encoder) == [0, 1]


# ---------------------------------------------------------------------------------- refusals


def write_model_bin(path, variables: dict[str, np.ndarray], spec="WhisperSpec", version=6):
    """A model.bin in CTranslate2's layout, written independently of the reader under test."""
    codes = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("float16"): 4}

    def string(s):
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    out = struct.pack("<I", version) + string(spec) + struct.pack("<II", 1, len(variables))
    for name, value in variables.items():
        out += string(name) + struct.pack("<B", value.ndim) + struct.pack(f"<{value.ndim}I", *value.shape)
        out += struct.pack("<BI", codes[value.dtype], value.nbytes) + value.tobytes()
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    (path / "model.bin").write_bytes(out + struct.pack("<I", 0))


def test_not_a_whisper_spec_is_refused(tmp_path):
    write_model_bin(tmp_path / "m", {"encoder/x": np.zeros(2, np.float32)}, spec="TransformerSpec")
    with pytest.raises(
        WhisperImportError, match=r"m/model\.bin: a CTranslate2 TransformerSpec model; expected a WhisperSpec"
    ):
        load_whisper_encoder(tmp_path / "m")


def test_truncated_model_bin_names_the_file_and_the_variable(ct2_dirs, tmp_path):
    data = (ct2_dirs["float16"] / "model.bin").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "model.bin").write_bytes(data[: len(data) // 3])
    with pytest.raises(WhisperImportError, match=r"cut/model\.bin: truncated: .*needs bytes"):
        load_whisper_encoder(tmp_path / "cut")
    (tmp_path / "cut" / "model.bin").write_bytes(b"")
    with pytest.raises(WhisperImportError, match=r"cut/model\.bin: not a CTranslate2 model file"):
        load_whisper_encoder(tmp_path / "cut")


def test_absurd_dims_are_refused_before_allocating(tmp_path):
    # A header that claims a 4-GB tensor in a file of a few bytes: refused as truncated, not allocated.
    path = tmp_path / "huge"
    write_model_bin(path, {"encoder/conv1/weight": np.zeros((1, 1, 1), np.float32)})
    data = bytearray((path / "model.bin").read_bytes())
    name_end = data.index(b"encoder/conv1/weight\0") + len("encoder/conv1/weight\0")
    struct.pack_into("<3I", data, name_end + 1, 1 << 20, 1 << 10, 1)  # (2^20, 2^10, 1) float32
    struct.pack_into("<I", data, name_end + 1 + 12 + 1, (1 << 32) - 4)
    (path / "model.bin").write_bytes(bytes(data))
    with pytest.raises(WhisperImportError, match=r"huge/model\.bin: .*encoder/conv1/weight has shape"):
        load_whisper_encoder(path)

    # Consistent sizes, but a width no Whisper has.
    write_model_bin(
        path,
        {
            "encoder/conv1/weight": np.zeros((9000, 1, 1), np.float16),
            "encoder/position_encodings/encodings": np.zeros((1, 1), np.float16),
            "encoder/layer_0/ffn/linear_0/weight": np.zeros((1, 1), np.float16),
        },
    )
    with pytest.raises(
        WhisperImportError, match=r"huge/model\.bin: encoder dims n_state=9000.*outside what any Whisper uses"
    ):
        load_whisper_encoder(path)


def test_missing_encoder_variable_and_missing_model_bin(ct2_dirs, tmp_path):
    write_model_bin(tmp_path / "partial", {"encoder/conv1/weight": np.zeros((8, 80, 3), np.float32)})
    with pytest.raises(WhisperImportError, match=r"partial/model\.bin: a WhisperSpec without the encoder variable"):
        load_whisper_encoder(tmp_path / "partial")
    (tmp_path / "partial" / "model.bin").unlink()
    with pytest.raises(WhisperImportError, match=r"partial/config\.json: not a readable Hugging Face Whisper config"):
        load_whisper_encoder(tmp_path / "partial")
