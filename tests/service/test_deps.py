"""service.api.deps on a bare app: the engine dependency's 503, and how read_audio takes the upload."""

from __future__ import annotations

from types import SimpleNamespace

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from service.api.deps import EngineDep, read_audio
from service.problems import install_problem_handlers

MAX_BYTES = 1000


def make_app(engine=None) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    app.state.engine = engine

    @app.get("/engine")
    async def engine_route(engine: EngineDep):
        return {"engine": engine.name}

    @app.post("/audio")
    async def audio(request: Request):
        return {"bytes": len(await read_audio(request, MAX_BYTES))}

    return app


def test_the_engine_dependency_is_a_503_with_retry_until_the_model_is_loaded():
    response = TestClient(make_app()).get("/engine")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json()["type"] == "urn:quads:problem:not-ready"
    assert TestClient(make_app(SimpleNamespace(name="e"))).get("/engine").json() == {"engine": "e"}


def test_audio_comes_raw_for_audio_types_or_from_the_file_field():
    client = TestClient(make_app())
    assert client.post("/audio", content=b"x" * 10, headers={"Content-Type": "audio/wav"}).json() == {"bytes": 10}
    files = {"file": ("clip.wav", b"y" * 7, "audio/wav")}
    assert client.post("/audio", files=files, data={"note": "kitchen"}).json() == {"bytes": 7}
    two = {"file": ("clip.wav", b"y", "audio/wav"), "more": ("b.wav", b"z", "audio/wav")}
    assert client.post("/audio", files=two).json()["type"] == "urn:quads:problem:malformed-multipart"  # one file


def test_an_upload_without_audio_says_how_to_send_it():
    client = TestClient(make_app())
    cases = [
        (dict(content=b"{}", headers={"Content-Type": "application/json"}), 415, "unsupported-media-type"),
        (dict(content=b"x"), 415, "unsupported-media-type"),
        (dict(files={"audio": ("clip.wav", b"y", "audio/wav")}), 422, "missing-file"),
        (dict(data={"file": "not a file"}, files={"x": ("a", b"b")}), 422, "file-not-uploaded"),
        (
            dict(content=b"--nope\r\n", headers={"Content-Type": "multipart/form-data; boundary=b"}),
            400,
            "malformed-multipart",
        ),
    ]
    for kwargs, status, slug in cases:
        response = client.post("/audio", **kwargs)
        assert response.status_code == status, (kwargs, response.text)
        body = response.json()
        assert body["type"] == f"urn:quads:problem:{slug}"
        if status != 400:
            assert "curl" in body["detail"], body
    assert "'audio'" in client.post("/audio", files={"audio": ("c.wav", b"y")}).json()["detail"]  # names what came
