"""POST /intent of a model that can refuse: understood, intent null, top_k without the refusal
class, the threshold setting, the metric, /v1/model and the OpenAPI schema."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from core.checkpoint import load_checkpoint
from core.refusal import REFUSAL_LABEL
from service.main import create_app
from service.settings import Settings
from tests.http_checks import metric_samples
from tests.service_inputs import LABELS, reference_probabilities, write_tiny_checkpoint


@pytest.fixture(scope="module")
def refusing(tmp_path_factory):
    """A model whose refusal class always wins, and one whose refusal class never does (threshold 0.9)."""
    folder = tmp_path_factory.mktemp("refusal")
    return {
        "always": write_tiny_checkpoint(folder / "always.safetensors", refusal_bias=50.0),
        "never": write_tiny_checkpoint(folder / "never.safetensors", refusal_bias=-50.0, threshold=0.9),
    }


def serve(path, **settings):
    return TestClient(create_app(Settings(model=path, threads=1, precision="float32", **settings)))


def answer(client, wav: bytes, **params) -> dict:
    response = client.post("/intent", content=wav, headers={"Content-Type": "audio/wav"}, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_clip_the_refusal_class_wins_is_not_understood(refusing, speech_wav):
    with serve(refusing["always"]) as client:
        body = answer(client, speech_wav, top_k=100)
        expected = reference_probabilities(load_checkpoint(refusing["always"]), speech_wav)
        assert body["understood"] is False and body["intent"] is None and body["slots"] == {}
        assert [s["intent"] for s in body["top_k"]] == [LABELS[i] for i in expected[:-1].argsort(descending=True)]
        assert REFUSAL_LABEL not in [s["intent"] for s in body["top_k"]]
        assert (
            body["confidence"] == pytest.approx(float(expected[:-1].max()), abs=1e-5) == body["top_k"][0]["confidence"]
        )
        samples = metric_samples(client)
        assert samples[("quads_intent_answers_total", (("understood", "false"),))] == 1.0
        assert samples[("quads_intent_answers_total", (("understood", "true"),))] == 0.0


def test_the_threshold_refuses_unsure_answers_and_the_setting_overrides_it(refusing, speech_wav):
    checkpoint = load_checkpoint(refusing["never"])
    expected = reference_probabilities(checkpoint, speech_wav)
    best = float(expected[:-1].max())
    assert best < 0.9  # a random tiny model is never that sure: the stored threshold refuses it
    with serve(refusing["never"]) as client:
        assert answer(client, speech_wav)["understood"] is False
        assert client.get("/v1/model").json()["confidence_threshold"] == pytest.approx(0.9)
    with serve(refusing["never"], confidence_threshold=0.0) as client:
        body = answer(client, speech_wav)
        assert body["understood"] is True and body["intent"] == LABELS[int(expected[:-1].argmax())]
        assert body["confidence"] == pytest.approx(best, abs=1e-5)
    with serve(refusing["never"], confidence_threshold=best + 1e-3) as client:
        assert answer(client, speech_wav)["understood"] is False


def test_model_info_lists_the_intents_and_how_it_refuses(refusing, checkpoint_path):
    with serve(refusing["never"]) as client:
        info = client.get("/v1/model").json()
        assert info["labels"] == LABELS and info["can_refuse"] is True
    with serve(checkpoint_path) as client:  # a model without a refusal class understands everything
        info = client.get("/v1/model").json()
        assert info["can_refuse"] is False and info["confidence_threshold"] == 0.0


def test_openapi_documents_understood_with_a_refused_example(refusing):
    with serve(refusing["always"]) as client:
        schema = client.get("/openapi.json").json()["components"]["schemas"]["IntentResponse"]
    assert {"understood", "intent", "confidence", "top_k"} <= set(schema["required"])
    assert {"type": "null"} in schema["properties"]["intent"]["anyOf"]
    assert [e["understood"] for e in schema["examples"]] == [True, False]
    assert schema["examples"][1]["intent"] is None


def test_the_threshold_setting_is_checked():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="less than or equal to 1"):
        Settings(confidence_threshold=1.5)
