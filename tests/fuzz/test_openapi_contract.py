"""Schemathesis against the service's own OpenAPI document (``GET /openapi.json``).

Every operation of the running service, with generated valid and invalid
inputs (examples, coverage, fuzzing and the stateful phase, which chains
``POST /event-stream/`` into ``DELETE /event-stream/{stream_id}`` through the
link schemathesis infers from the response schema). Checks: no 5xx, every
status code documented, bodies conform to the response schemas, content
types conform. A second test feeds the same engine a document that lies
about one response and requires a failure, so the harness can fail.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import requests
import schemathesis
from schemathesis.engine import Status, events, from_schema

from tests.e2e.service import ServiceProcess

from .probes import actor_tree, is_ready

MAX_EXAMPLES = 100
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "response_schema_conformance",
    "content_type_conformance",
)


@dataclass
class RunResult:
    cases: Counter[str] = field(default_factory=Counter)
    checks_run: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    inferred_links: int = 0
    stop_reason: str = ""
    seconds: float = 0.0


def _config(base_url: str) -> schemathesis.Config:
    checks: dict[str, Any] = {"enabled": False} | {name: {"enabled": True} for name in CHECKS}
    return schemathesis.Config.from_dict(
        {
            "base-url": base_url,
            "generation": {"max-examples": MAX_EXAMPLES, "mode": "all", "deterministic": True},
            "checks": checks,
            "max-failures": 20,
        }
    )


def run_schemathesis(schema: Any) -> RunResult:
    """Drive the engine the CLI uses and collect what it did."""
    result = RunResult()
    started = time.monotonic()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            result.cases[event.phase.value] += len(event.recorder.cases)
            for case_id, nodes in event.recorder.checks.items():
                for node in nodes:
                    result.checks_run[node.name] += 1
                    if node.status != Status.SUCCESS:
                        result.failures.append(_describe(event, case_id, node))
        elif isinstance(event, events.PhaseStarted) and event.payload is not None:
            result.inferred_links = event.payload.inferred_transitions
        elif isinstance(event, events.NonFatalError | events.FatalError):
            result.errors.append(f"{event.label}: {getattr(event, 'value', None) or event}")
        elif isinstance(event, events.EngineFinished):
            result.stop_reason = str(event.stop_reason)
            result.failures.extend(repr(failure) for failure in event.failures)
    result.seconds = time.monotonic() - started
    return result


def _describe(event: events.ScenarioFinished, case_id: str, node: Any) -> str:
    case = event.recorder.cases[case_id].value
    info = node.failure_info
    detail = info.failure.title if info is not None else node.status
    return f"{node.name} on {case.operation.label} ({event.phase.value}): {detail}\n  {info}"


def test_every_operation_conforms_to_the_openapi_document(service: ServiceProcess) -> None:
    schema = schemathesis.openapi.from_url(
        f"{service.api}/openapi.json", config=_config(service.api)
    )
    document = httpx.get(f"{service.api}/openapi.json").json()
    documented = {f"{m.upper()} {p}" for p, ops in document["paths"].items() for m in ops}
    operations = {op.ok().label for op in schema.get_all_operations()}
    # Every documented operation but the document itself, which schemathesis
    # leaves out when loading from its URL (it was fetched and parsed above).
    assert operations == documented - {"GET /openapi.json"}, operations

    result = run_schemathesis(schema)
    summary = (
        f"schemathesis: {sum(result.cases.values())} cases {dict(result.cases)} in "
        f"{result.seconds:.1f}s; checks {dict(result.checks_run)}; "
        f"inferred links {result.inferred_links}"
    )
    print(summary)
    assert not result.errors, result.errors
    assert not result.failures, "\n".join(result.failures)
    assert result.stop_reason == "completed", result.stop_reason
    assert set(result.checks_run) == set(CHECKS), result.checks_run
    assert result.cases["fuzzing"] >= 50 and result.cases["coverage"] >= 50, summary
    assert result.inferred_links >= 1 and result.cases["stateful"] > 0, summary
    # The service survived it all, with no websocket anywhere.
    assert is_ready(service.api)
    actor_tree(service.api)


def test_a_lying_document_is_caught(service: ServiceProcess) -> None:
    """The same harness reports a response that contradicts the document."""
    document = httpx.get(f"{service.api}/openapi.json").json()
    lying = copy.deepcopy(document)
    version = lying["components"]["schemas"]["Version"]["properties"]
    version["protocol"]["enum"] = ["HTTP"]  # the service answers "WEBSOCKET"
    schema = schemathesis.openapi.from_dict(
        json.loads(json.dumps(lying)), config=_config(service.api)
    )
    result = run_schemathesis(schema.include(operation_id="getVersion"))
    assert any(f.startswith("response_schema_conformance") for f in result.failures), result


def test_keep_alive_survives_bodies_the_handler_ignores(service: ServiceProcess) -> None:
    """Regression: Hypercorn stopped answering a keep-alive connection when a
    response (404, 405, DELETE, GET) went out before the unread request body
    had arrived; schemathesis found it with ``PUT /event-stream/``."""
    body = b'{"routing_key": "x"}'
    calls = [
        ("PUT", "/event-stream/", 405),
        ("POST", "/no-such-path", 404),
        ("GET", "/event-stream/version/", 200),
        ("DELETE", "/event-stream/999999999", 404),
        ("PATCH", "/health/live", 405),
    ]
    with requests.Session() as session:
        for _ in range(40):
            for method, path, status in calls:
                response = session.request(method, f"{service.api}{path}", data=body, timeout=5)
                assert response.status_code == status, (method, path, response.text)
