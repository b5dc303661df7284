"""Importing real Whisper checkpoints, checked against the reference implementations themselves."""

import json
import pickle
from dataclasses import asdict

import pytest
import torch
import whisper.model as ow
from transformers import WhisperConfig, WhisperModel

from tests.pickle_payload import PicklePayload
from training.whisper import WhisperImportError, load_whisper_encoder

torch.manual_seed(0)


def openai_checkpoint(path, n_mels=80, n_state=64, n_head=4, n_layer=2):
    dims = ow.ModelDimensions(
        n_mels=n_mels,
        n_audio_ctx=1500,
        n_audio_state=n_state,
        n_audio_head=n_head,
        n_audio_layer=n_layer,
        n_vocab=64,
        n_text_ctx=8,
        n_text_state=n_state,
        n_text_head=n_head,
        n_text_layer=1,
    )
    model = ow.Whisper(dims).eval()
    with torch.no_grad():  # LayerNorms start at 1/0: randomise them so a mis-mapped one shows.
        for p in model.encoder.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, path)
    return model


def hf_checkpoint(path, n_mels=80, d_model=64, heads=4, layers=2, ffn=96):
    config = WhisperConfig(
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=layers,
        encoder_attention_heads=heads,
        encoder_ffn_dim=ffn,
        decoder_layers=1,
        decoder_attention_heads=heads,
        decoder_ffn_dim=ffn,
        vocab_size=64,
        max_source_positions=1500,
        max_target_positions=8,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    model = WhisperModel(config).eval()
    with torch.no_grad():
        for p in model.encoder.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize("n_mels", [80, 128])
def test_openai_pt_encoder_matches_reference(tmp_path, n_mels):
    ref = openai_checkpoint(tmp_path / "tiny.pt", n_mels=n_mels)
    ours = load_whisper_encoder(tmp_path / "tiny.pt")
    mel = torch.randn(1, n_mels, 3000)
    with torch.no_grad():
        expected = ref.encoder(mel)
        got, _ = ours(mel)
    assert (got - expected).abs().max().item() < 1e-4

    # 3 s: the reference with its positional table sliced to 150 positions.
    short = mel[:, :, :300]
    ref.encoder.positional_embedding = ref.encoder.positional_embedding[:150]
    with torch.no_grad():
        expected, (got, _) = ref.encoder(short), ours(short)
    assert got.shape == (1, 150, 64)
    assert (got - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("prefixed", [True, False])
def test_hugging_face_encoder_matches_reference(tmp_path, prefixed):
    ref = hf_checkpoint(tmp_path / "hf")
    if not prefixed:  # Some exports (e.g. WhisperForAudioClassification) keep encoder.* without "model.".
        from safetensors.torch import load_file, save_file

        f = tmp_path / "hf" / "model.safetensors"
        state = load_file(f)
        save_file({k.removeprefix("model."): v for k, v in state.items()}, f)
    ours = load_whisper_encoder(tmp_path / "hf")
    mel = torch.randn(1, 80, 3000)
    with torch.no_grad():
        expected = ref.encoder(mel).last_hidden_state
        got, _ = ours(mel)
    assert (got - expected).abs().max().item() < 1e-4

    ref.encoder.config.max_source_positions = 150
    ref.encoder.embed_positions = torch.nn.Embedding.from_pretrained(ref.encoder.embed_positions.weight[:150])
    short = mel[:, :, :300]
    with torch.no_grad():
        expected, (got, _) = ref.encoder(short).last_hidden_state, ours(short)
    assert (got - expected).abs().max().item() < 1e-4


def test_missing_file_names_the_path_and_what_was_expected(tmp_path):
    with pytest.raises(WhisperImportError, match=r"nothing\.pt: not found; expected an OpenAI Whisper \.pt"):
        load_whisper_encoder(tmp_path / "nothing.pt")


def test_truncated_pt_is_refused_with_the_file_name(tmp_path):
    openai_checkpoint(tmp_path / "tiny.pt")
    data = (tmp_path / "tiny.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WhisperImportError, match=r"cut\.pt: not a readable OpenAI Whisper \.pt checkpoint"):
        load_whisper_encoder(tmp_path / "cut.pt")


def test_pickle_payload_disguised_as_pt_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"dims": {}, "model_state_dict": PicklePayload(marker)}, tmp_path / "evil.pt")
    (tmp_path / "evil2.pt").write_bytes(pickle.dumps(PicklePayload(marker)))
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(WhisperImportError, match="refused|not a readable"):
            load_whisper_encoder(tmp_path / name)
    assert not marker.exists()


def test_wrong_format_and_broken_hf_directory(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(WhisperImportError, match="'dims' and 'model_state_dict'"):
        load_whisper_encoder(tmp_path / "other.pt")

    hf_checkpoint(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(WhisperImportError, match=r"model\.safetensors: not a readable \.safetensors file"):
        load_whisper_encoder(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"d_model": 64}))
    with pytest.raises(WhisperImportError, match=r"config\.json: not a readable Hugging Face Whisper config"):
        load_whisper_encoder(tmp_path / "hf")
