"""The HTTP API in process (TestClient runs the lifespan): answers, errors, metrics, settings."""

from __future__ import annotations

import io
import re
import shutil
import subprocess

import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient
from pydantic import ValidationError

from core.audio import ACCEPTED_FORMATS
from core.checkpoint import CheckpointError
from service.api.schemas import IntentResponse
from service.engine import EngineOptions, InferenceEngine
from service.main import create_app
from service.settings import DEFAULT_MODEL_DIR, PROJECT_ROOT, Settings
from tests.http_checks import PROBLEM, assert_problem, metric_samples
from tests.service_inputs import (
    ENCODINGS,
    LABELS,
    MEDIA_TYPES,
    PHRASES,
    encode,
    reference_probabilities,
    wav_bytes,
)


def settings_for(path, **overrides) -> Settings:
    # float32: these tests compare answers with the float32 model to 1e-5 (auto may pick bfloat16).
    return Settings(model=path, threads=1, **{"precision": "float32", **overrides})


@pytest.fixture(scope="module")
def app(checkpoint_path):
    return create_app(settings_for(checkpoint_path, max_batch_size=4))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as client:
        yield client


def post_file(client, data: bytes, media_type="audio/wav", name="clip.wav", **params):
    return client.post("/intent", files={"file": (name, data, media_type)}, params=params)


# --- answers -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, subtype, rate, channels", ENCODINGS, ids=lambda v: str(v))
def test_intent_equals_the_model_run_alone(client, checkpoint, speech, fmt, subtype, rate, channels):
    samples, source_rate = speech[PHRASES[0]]
    data = encode(samples, source_rate, fmt, subtype, rate, channels)
    response = post_file(client, data, MEDIA_TYPES[fmt], f"clip.{fmt.lower()}")
    assert response.status_code == 200, response.text
    body = response.json()

    expected = reference_probabilities(checkpoint, data)
    assert body["intent"] == LABELS[int(expected.argmax())]
    assert body["confidence"] == pytest.approx(float(expected.max()), abs=1e-5)
    assert [s["intent"] for s in body["top_k"]] == [LABELS[i] for i in expected.topk(3).indices]
    assert [s["confidence"] for s in body["top_k"]] == pytest.approx(expected.topk(3).values.tolist(), abs=1e-5)
    # MP3 frames add up to ~0.1 s of encoder padding; the other formats are sample-exact.
    assert body["audio_seconds"] == pytest.approx(len(samples) / source_rate, abs=0.15 if fmt == "MP3" else 1e-3)
    assert body["model"] == {"name": "quads-fsc-4bit", "bits": 4, "file_bytes": checkpoint_path_size(checkpoint)}
    timing = body["timing_ms"]
    assert all(timing[k] >= 0 for k in ("decode", "features", "inference"))
    assert timing["total"] >= timing["inference"]


@pytest.mark.parametrize(
    "container, codec, rate, layout, media_type",
    [
        ("webm", "libopus", 48000, "mono", "audio/webm"),  # a browser's MediaRecorder
        ("ipod", "aac", 44100, "stereo", "audio/mp4"),  # a phone's M4A
    ],
)
def test_browser_and_phone_recordings_are_answered(
    client, checkpoint, speech, container, codec, rate, layout, media_type
):
    import torch

    from core.audio import resample
    from tests.speech import encode_container

    samples, source_rate = speech[PHRASES[0]]
    at_16k = resample(torch.from_numpy(samples), source_rate).numpy()
    data = encode_container(at_16k, container, codec, rate, layout)
    for response in (
        post_file(client, data, media_type, f"clip.{container}"),
        client.post("/intent", content=data, headers={"Content-Type": media_type}),
    ):
        assert response.status_code == 200, response.text
        expected = reference_probabilities(checkpoint, data)
        assert response.json()["intent"] == LABELS[int(expected.argmax())]
        assert response.json()["audio_seconds"] == pytest.approx(len(samples) / source_rate, abs=0.15)


def checkpoint_path_size(checkpoint) -> int:
    return checkpoint.path.stat().st_size


def test_raw_audio_body_gets_the_same_answer_as_multipart(client, speech_wav):
    multipart = post_file(client, speech_wav).json()
    for media_type in ("audio/wav", "audio/x-wav", "application/octet-stream"):
        raw = client.post("/intent", content=speech_wav, headers={"Content-Type": media_type})
        assert raw.status_code == 200, raw.text
        assert raw.json()["top_k"] == multipart["top_k"]


@pytest.mark.parametrize("top_k, expected_length", [(1, 1), (5, 5), (100, len(LABELS))])
def test_top_k_query_sets_the_list_length(client, speech_wav, top_k, expected_length):
    body = post_file(client, speech_wav, top_k=top_k).json()
    scores = body["top_k"]
    assert len(scores) == expected_length
    assert scores[0] == {"intent": body["intent"], "slots": body["slots"], "confidence": body["confidence"]}
    assert [s["confidence"] for s in scores] == sorted((s["confidence"] for s in scores), reverse=True)
    if top_k >= len(LABELS):
        assert sorted(s["intent"] for s in scores) == sorted(LABELS)
        assert sum(s["confidence"] for s in scores) == pytest.approx(1.0, abs=1e-5)


def test_model_metadata(client, checkpoint):
    info = client.get("/v1/model").json()
    fused_key_biases = 4 * checkpoint.dims.n_layer * checkpoint.dims.n_state  # float32 zeros (service.served_attention)
    assert info == {
        "name": "quads-fsc-4bit",
        "labels": LABELS,
        "context": None,  # a model trained on labelled data, not built from a context
        "can_refuse": False,
        "confidence_threshold": 0.0,
        "bits": 4,
        "params": checkpoint.n_params,
        "file_bytes": checkpoint.file_bytes,
        "memory_bytes": checkpoint.memory_bytes + fused_key_biases,
        "dims": checkpoint.dims.to_dict(),
        "sha256": checkpoint.sha256,
        "max_audio_seconds": 30.0,
        "precision": "float32",
        "compute_path": info["compute_path"],
    }
    assert info["compute_path"] in ("float32-onednn", "float32-torch")


def test_health_and_readiness(client, app):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    app.state.draining = True
    try:
        assert_problem(client.get("/readyz"), 503, "draining")
        assert client.get("/healthz").status_code == 200  # liveness does not follow readiness
    finally:
        app.state.draining = False


def test_openapi_documents_the_contract(client):
    schema = client.get("/openapi.json").json()
    intent = schema["paths"]["/intent"]["post"]
    assert set(intent["requestBody"]["content"]) == {"multipart/form-data", "audio/*"}
    assert intent["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/IntentResponse")
    for status in ("400", "413", "415", "422", "503"):
        assert PROBLEM in intent["responses"][status]["content"]
    fields = schema["components"]["schemas"]["IntentResponse"]["properties"]
    assert {"intent", "confidence", "top_k", "audio_seconds", "model", "timing_ms"} <= set(fields)
    assert {"/healthz", "/readyz", "/v1/model", "/metrics"} <= set(schema["paths"])


def test_openapi_shares_one_problem_schema_names_operations_and_gives_examples(client):
    schema = client.get("/openapi.json").json()
    problem = schema["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"]) and "request_id" in problem["properties"]
    errors = [
        answer
        for path in schema["paths"].values()
        for operation in path.values()
        for status, answer in operation["responses"].items()
        if status[0] in "45"
    ]
    assert len(errors) >= 8
    assert all(a["content"] == {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}} for a in errors)
    operation_ids = [op["operationId"] for path in schema["paths"].values() for op in path.values()]
    assert len(operation_ids) == len(set(operation_ids))
    assert schema["paths"]["/intent"]["post"]["operationId"] == "classify_intent"
    understood, refused = schema["components"]["schemas"]["IntentResponse"]["examples"]
    assert IntentResponse.model_validate(understood).intent == "activate_lights_none"
    assert IntentResponse.model_validate(refused).understood is False and refused["intent"] is None


# --- errors: one test per status ---------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"not audio at all", b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(20), b"fLaC" + bytes(100)]
)
def test_400_undecodable_audio(client, data):
    body = assert_problem(post_file(client, data), 400, "undecodable-audio")
    assert ACCEPTED_FORMATS in body["detail"] and "BytesIO" not in body["detail"]


@pytest.fixture(scope="module")
def small_body_client(checkpoint_path):
    with TestClient(create_app(settings_for(checkpoint_path, max_body_bytes=200_000))) as client:
        yield client


def test_413_declared_content_length_over_the_limit(small_body_client):
    response = small_body_client.post("/intent", content=b"\0" * 200_001, headers={"Content-Type": "audio/wav"})
    body = assert_problem(response, 413, "body-too-large")
    assert "200000-byte limit" in body["detail"]


def test_413_counts_streamed_bytes_without_content_length(small_body_client):
    def chunks():
        for _ in range(10):
            yield b"\0" * 30_000

    response = small_body_client.post("/intent", content=chunks(), headers={"Content-Type": "audio/wav"})
    assert "content-length" not in response.request.headers  # chunked: only counting can stop it
    assert_problem(response, 413, "body-too-large")


def test_413_counts_bytes_when_content_length_lies(small_body_client, speech_wav):
    big = speech_wav + bytes(250_000)
    response = small_body_client.post(
        "/intent", content=big, headers={"Content-Type": "audio/wav", "Content-Length": "1000"}
    )
    assert_problem(response, 413, "body-too-large")
    multipart = small_body_client.post("/intent", files={"file": ("a.wav", big, "audio/wav")})
    assert_problem(multipart, 413, "body-too-large")
    # Under the limit, the same client is served.
    assert small_body_client.post("/intent", files={"file": ("a.wav", speech_wav, "audio/wav")}).status_code == 200


@pytest.mark.parametrize("headers", [{"Content-Type": "text/plain"}, {"Content-Type": "application/json"}, {}])
def test_415_unsupported_content_type(client, speech_wav, headers):
    body = assert_problem(client.post("/intent", content=speech_wav, headers=headers), 415, "unsupported-media-type")
    assert "multipart/form-data" in body["detail"] and "audio/*" in body["detail"]


def test_422_missing_file_field(client, speech_wav):
    body = assert_problem(
        client.post("/intent", files={"audio": ("a.wav", speech_wav, "audio/wav")}), 422, "missing-file"
    )
    assert "'audio'" in body["detail"]
    assert_problem(
        client.post("/intent", data={"file": "not a file"}, files={"x": ("a", b"1")}), 422, "file-not-uploaded"
    )


def test_422_empty_audio(client):
    assert_problem(post_file(client, b""), 422, "empty-audio")
    assert_problem(post_file(client, wav_bytes(np.zeros(0, dtype=np.float32), 16000)), 422, "empty-audio")


def test_422_audio_longer_than_the_limit(client):
    noise = np.random.default_rng(0).uniform(-0.1, 0.1, 31 * 8000).astype(np.float32)
    body = assert_problem(post_file(client, wav_bytes(noise, 8000)), 422, "audio-too-long")
    assert "31.0 s" in body["detail"] and "30 s" in body["detail"]


def test_422_invalid_query_parameter(client, speech_wav):
    body = assert_problem(post_file(client, speech_wav, top_k=0), 422, "invalid-request")
    assert body["errors"][0]["loc"] == ["query", "top_k"]
    assert_problem(post_file(client, speech_wav, top_k="three"), 422, "invalid-request")


def test_503_before_the_model_is_loaded(checkpoint_path, speech_wav):
    client = TestClient(create_app(settings_for(checkpoint_path)))  # no `with`: lifespan never runs
    assert_problem(post_file(client, speech_wav), 503, "not-ready")
    assert_problem(client.get("/readyz"), 503, "not-ready")
    assert_problem(client.get("/v1/model"), 503, "not-ready")
    assert client.get("/healthz").status_code == 200


def test_503_overloaded_when_the_queue_is_full(checkpoint_path, speech_wav, served_checkpoint):
    app = create_app(settings_for(checkpoint_path))
    # Not started: nothing drains the queue.
    engine = InferenceEngine(served_checkpoint, EngineOptions(max_queue=1), metrics=app.state.metrics)
    app.state.engine = engine
    engine.submit(speech_wav)
    client = TestClient(app)
    response = post_file(client, speech_wav)
    assert_problem(response, 503, "overloaded")
    assert response.headers["Retry-After"] == "1"
    assert metric_samples(client)[("quads_rejected_total", (("reason", "overloaded"),))] == 1
    assert metric_samples(client)[("quads_queue_depth", ())] == 1
    engine.close()


def test_503_draining_after_the_engine_closed(checkpoint_path, speech_wav, served_checkpoint):
    app = create_app(settings_for(checkpoint_path))
    app.state.engine = engine = InferenceEngine(served_checkpoint, metrics=app.state.metrics).start()
    engine.close()
    client = TestClient(app)
    assert_problem(post_file(client, speech_wav), 503, "draining")
    assert metric_samples(client)[("quads_rejected_total", (("reason", "draining"),))] == 1


def test_404_and_405_are_problems(client):
    body = assert_problem(client.get("/no/such/thing"), 404, "not-found")
    assert "/no/such/thing" in body["detail"]
    body = assert_problem(client.get("/intent"), 405, "method-not-allowed")
    assert "POST" in body["detail"]


def test_client_input_never_causes_a_500(client, speech):
    samples, rate = speech[PHRASES[1]]
    rng = np.random.default_rng(1)
    for fmt, subtype, to_rate, channels in ENCODINGS:
        data = encode(samples, rate, fmt, subtype, to_rate, channels)
        for cut in (4, 44, 45, 100, len(data) // 2, len(data) - 1):
            response = post_file(client, data[:cut])
            assert response.status_code in (200, 400, 422), (fmt, cut, response.text)
        flipped = bytearray(data)
        flipped[len(data) // 3 :: 97] = rng.integers(
            0, 256, len(flipped[len(data) // 3 :: 97]), dtype=np.uint8
        ).tobytes()
        assert post_file(client, bytes(flipped)).status_code in (200, 400, 422), fmt
    assert client.get("/healthz").status_code == 200


# --- metrics -----------------------------------------------------------------------------


def test_metrics_appear_and_change_after_requests(client, checkpoint, speech_wav):
    before = metric_samples(client)
    ok = ("quads_http_requests_total", (("route", "/intent"), ("status", "200")))
    body = post_file(client, speech_wav).json()
    client.get("/no/such/thing/42")
    after = metric_samples(client)

    assert after[ok] == before.get(ok, 0) + 1
    for stage in ("decode", "features", "inference", "total"):
        key = ("quads_stage_duration_seconds_count", (("stage", stage),))
        assert after[key] == before[key] + 1
    assert after[("quads_audio_duration_seconds_sum", ())] == pytest.approx(
        before[("quads_audio_duration_seconds_sum", ())] + body["audio_seconds"]
    )
    assert after[("quads_batch_size_count", ())] == before[("quads_batch_size_count", ())] + 1
    assert after[("quads_requests_in_flight", ())] == 0
    # Unmatched paths collapse into one label value; raw paths never become labels.
    assert after[("quads_http_requests_total", (("route", "unmatched"), ("status", "404")))] >= 1
    assert not any("/no/such" in str(labels) for _, labels in after)

    assert after[("quads_model_file_bytes", ())] == checkpoint.file_bytes
    assert (
        after[("quads_model_memory_bytes", ())]
        == client.get("/v1/model").json()["memory_bytes"]
        > checkpoint.file_bytes
    )
    assert after[("quads_model_parameters", ())] == checkpoint.n_params
    assert after[("quads_model_bit_width", ())] == 4
    path = client.get("/v1/model").json()["compute_path"]
    info = (
        "quads_model_info",
        (("bits", "4"), ("compute_path", path), ("name", "quads-fsc-4bit"), ("sha256", checkpoint.sha256)),
    )
    assert after[info] == 1


def test_process_and_gc_metrics_without_created_series_and_docs_routes_by_name(client):
    client.get("/docs")
    client.get("/openapi.json")
    text = client.get("/metrics").text
    samples = metric_samples(client)
    for name in (
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ):
        assert (name, ()) in samples, name
    assert any(name == "python_gc_objects_collected_total" for name, _ in samples)
    assert "_created" not in text
    for route in ("/docs", "/openapi.json"):
        assert samples[("quads_http_requests_total", (("route", route), ("status", "200")))] >= 1


def test_rejected_before_routing_is_counted_under_its_route(small_body_client):
    before = metric_samples(small_body_client)
    small_body_client.post("/intent", content=b"\0" * 300_000, headers={"Content-Type": "audio/wav"})
    key = ("quads_http_requests_total", (("route", "/intent"), ("status", "413")))
    assert metric_samples(small_body_client)[key] == before.get(key, 0) + 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_promtool_finds_nothing_to_report(client, speech_wav):
    post_file(client, speech_wav)
    text = client.get("/metrics").text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert (check.returncode, check.stdout + check.stderr) == (0, "")


def test_each_app_has_its_own_registry(checkpoint_path, client, speech_wav):
    post_file(client, speech_wav)
    fresh = TestClient(create_app(settings_for(checkpoint_path)))
    samples = metric_samples(fresh)
    assert ("quads_http_requests_total", (("route", "/intent"), ("status", "200"))) not in samples


# --- settings and startup ----------------------------------------------------------------


def test_model_path_rules(monkeypatch, tmp_path):
    for name in ("QUADS_MODEL", "QUADS_MODEL_DIR", "QUADS_BITS", "QUADS_MODEL_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    default = Settings().model_path
    assert default == DEFAULT_MODEL_DIR / "quads-fsc-4bit.safetensors"
    assert default.is_absolute()  # independent of the working directory
    # In a checkout, the package's models/ is the repository's (a wheel carries the files).
    assert default.resolve() == (PROJECT_ROOT / "models" / "quads-fsc-4bit.safetensors").resolve()

    monkeypatch.setenv("QUADS_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("QUADS_BITS", "8")
    assert Settings().model_path == tmp_path / "quads-fsc-8bit.safetensors"
    assert Settings().expected_bits == 8

    monkeypatch.setenv("QUADS_MODEL", "/srv/custom.safetensors")
    assert Settings().model_path.as_posix() == "/srv/custom.safetensors"
    assert Settings().expected_bits == 8  # QUADS_BITS still checks the file
    monkeypatch.delenv("QUADS_BITS")
    assert Settings().expected_bits is None

    monkeypatch.setenv("QUADS_BITS", "9")
    with pytest.raises(ValidationError, match="QUADS_BITS must be one of"):
        Settings()


def test_precision_bfloat16_needs_the_hardware_and_auto_is_the_default(monkeypatch):
    import service.settings as settings_module

    monkeypatch.setattr(settings_module, "native_bfloat16", lambda: False)
    with pytest.raises(ValidationError, match="AMX or AVX512-BF16"):
        Settings(precision="bfloat16")
    assert Settings().precision == "auto"  # measured at start: service.compute_path
    monkeypatch.setattr(settings_module, "native_bfloat16", lambda: True)
    assert Settings(precision="bfloat16").precision == "bfloat16"
    with pytest.raises(ValidationError):
        Settings(precision="float16")


def test_model_dir_and_bits_pick_the_checkpoint(model_dir, speech_wav):
    settings = Settings(model_dir=model_dir, bits=8, threads=1)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/model").json()["bits"] == 8
        assert post_file(client, speech_wav).json()["model"]["name"] == "quads-fsc-8bit"


def test_bad_model_path_fails_startup_with_the_reason(tmp_path):
    app = create_app(settings_for(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        with TestClient(app):
            pass
    assert isinstance(app.state.startup_error, CheckpointError)


def test_bits_that_disagree_with_the_file_fail_startup(checkpoint_path):
    with pytest.raises(CheckpointError, match="holds 4-bit weights, but QUADS_BITS=8"):
        with TestClient(create_app(Settings(model=checkpoint_path, bits=8, threads=1))):
            pass


def test_settings_read_the_environment(monkeypatch, checkpoint_path):
    monkeypatch.setenv("QUADS_MODEL", str(checkpoint_path))
    monkeypatch.setenv("QUADS_MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("QUADS_MAX_WAIT_MS", "2.5")
    monkeypatch.setenv("QUADS_THREADS", "1")
    with TestClient(create_app()) as client:
        engine = client.app.state.engine
        assert (engine.max_batch_size, engine.max_wait, engine.threads) == (3, 0.0025, 1)
    monkeypatch.setenv("QUADS_MAX_QUEUE", "0")
    with pytest.raises(ValidationError, match="max_queue"):
        Settings()


def _silence(seconds: float, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(int(seconds * rate), dtype=np.float32), rate, format="WAV")
    return buffer.getvalue()


def test_lower_audio_limit_from_settings(checkpoint_path):
    with TestClient(create_app(settings_for(checkpoint_path, max_audio_seconds=2.0))) as client:
        assert post_file(client, _silence(1.9, 16000)).status_code == 200
        body = assert_problem(post_file(client, _silence(2.5, 16000)), 422, "audio-too-long")
        assert "2 s" in body["detail"]


def test_serve_help_lists_every_variable_and_bad_values_name_the_variable(monkeypatch, capsys):
    from service.cli import cli

    with pytest.raises(SystemExit):
        cli(["--help"])
    help_text = capsys.readouterr().out
    for field in Settings.model_fields:
        assert f"QUADS_{field.upper()} (default " in help_text, field
    monkeypatch.setenv("QUADS_MAX_QUEUE", "lots")
    with pytest.raises(SystemExit) as exit_info:
        cli([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "QUADS_MAX_QUEUE (got 'lots'): Input should be a valid integer" in err and "max_queue" not in err


def test_docs_work_without_internet(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    assert assets and not [a for a in assets if a.startswith(("http:", "https:", "//"))], assets
    for path in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        assert path in assets
        asset = client.get(path)
        assert asset.status_code == 200 and len(asset.content) > 10_000, path
    assert "/openapi.json" in page.text and client.get("/openapi.json").status_code == 200
    assert client.get("/redoc").status_code == 404


def test_the_try_it_page_and_its_assets_need_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: it works offline
    for asset in ("try/try.js", "try/try.css"):
        response = client.get(f"/{asset}")
        assert response.status_code == 200 and "https://" not in response.text
    assert 'fetch("intent?top_k=3"' in client.get("/try/try.js").text  # the real endpoint, relative to the page
