"""Assertions on the service's answers: RFC 9457 problems (from a client or raw bytes) and /metrics samples."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

PROBLEM = "application/problem+json"


def assert_problem(response, status: int, slug: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status
    assert body["type"] == f"urn:quads:problem:{slug}"
    assert body["title"] and len(body["detail"]) > 20  # a sentence a person can act on
    return body


def metric_samples(client) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from GET /metrics."""
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def assert_problem_bytes(response: tuple[int, dict, bytes], status: int, slug: str) -> None:
    code, headers, body = response
    assert code == status
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == status and problem["type"] == f"urn:quads:problem:{slug}"
    assert len(problem["detail"]) > 20
