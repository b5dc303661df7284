"""POST /intent and /v1/model of a model built from a context: answers carry the frame's intent and slots."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from core.checkpoint import save_checkpoint
from core.frames import Frame, FrameTable
from core.model import IntentClassifier
from core.refusal import REFUSAL_LABEL
from service.main import create_app
from service.settings import Settings
from tests.service_inputs import TINY_DIMS

TABLE = FrameTable.of(
    [Frame("Play"), Frame("SetChannel", {"channel": "four"}), Frame("SetChannel", {"channel": "two"})],
    {"name": "media-player", "sha256": "0" * 64, "language": "en"},
)
LABELS = [*TABLE.frames, REFUSAL_LABEL]  # Play, SetChannel(channel=four), SetChannel(channel=two), refusal


def checkpoint_preferring(path, label: str, refusal_bias: float = 0.0):
    """A random tiny model whose head always picks ``label`` (its bias far above the others')."""
    torch.manual_seed(0)
    model = IntentClassifier(TINY_DIMS, len(LABELS)).eval()
    with torch.no_grad():
        model.head.bias[LABELS.index(label)] += 40.0
        model.head.bias[-1] += refusal_bias
    return save_checkpoint(path, model, LABELS, 32, frames=TABLE)


def answer(path, wav: bytes) -> tuple[dict, dict]:
    with TestClient(create_app(Settings(model=path, threads=1, precision="float32"))) as client:
        response = client.post("/intent", content=wav, headers={"Content-Type": "audio/wav"}, params={"top_k": 3})
        assert response.status_code == 200, response.text
        return response.json(), client.get("/v1/model").json()


def test_the_answer_is_the_frame_s_intent_with_its_slots(tmp_path, speech_wav):
    body, info = answer(checkpoint_preferring(tmp_path / "m.safetensors", "SetChannel(channel=four)"), speech_wav)
    assert body["understood"] is True
    assert body["intent"] == "SetChannel" and body["slots"] == {"channel": "four"}
    assert body["top_k"][0] == {"intent": "SetChannel", "slots": {"channel": "four"}, "confidence": body["confidence"]}
    assert {(k["intent"], tuple(k["slots"].items())) for k in body["top_k"][1:]} == {
        ("Play", ()),
        ("SetChannel", (("channel", "two"),)),
    }
    assert info["labels"] == ["Play", "SetChannel"]  # intents, each once
    assert info["context"] == {
        "name": "media-player",
        "sha256": "0" * 64,
        "language": "en",
        "slots": {"channel": ["four", "two"]},
    }


def test_a_frame_without_slots_answers_empty_slots_and_a_refusal_none(tmp_path, speech_wav):
    body, _ = answer(checkpoint_preferring(tmp_path / "m.safetensors", "Play"), speech_wav)
    assert (body["intent"], body["slots"]) == ("Play", {})
    body, _ = answer(
        checkpoint_preferring(tmp_path / "r.safetensors", "SetChannel(channel=two)", refusal_bias=80.0), speech_wav
    )
    assert body["understood"] is False and body["intent"] is None and body["slots"] == {}
    assert body["top_k"][0]["slots"] == {"channel": "two"}  # still given, for debugging


@pytest.mark.parametrize("path", ["/openapi.json"])
def test_the_schema_documents_slots_and_the_context(tmp_path, path):
    with TestClient(
        create_app(
            Settings(model=checkpoint_preferring(tmp_path / "m.safetensors", "Play"), threads=1, precision="float32")
        )
    ) as client:
        schemas = client.get(path).json()["components"]["schemas"]
    assert "slots" in schemas["IntentScore"]["properties"]
    assert schemas["IntentResponse"]["properties"]["slots"]["examples"] == [{"channel": "four"}]
    assert "sha256" in schemas["ContextInfo"]["properties"]
