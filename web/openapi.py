"""The OpenAPI 3.0 document of the internal API, written by hand.

Hand-written rather than generated so that it states exactly what the
handlers do, including every error status and its JSON body, which is what
a contract test (for example schemathesis) checks responses against. Every
path also works with a trailing slash (or without one); only the canonical
form is listed. When a token is configured the document declares the bearer
scheme and the 401 answers, so it always describes the running service.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from web.validation import MAX_ROUTING_KEY_BYTES

JSON = "application/json"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json_body(schema_name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("schemas", schema_name)}}}


def _error(description: str) -> dict[str, Any]:
    return _json_body("Error", description)


def _retry_later(description: str) -> dict[str, Any]:
    return {**_error(description), "headers": {"Retry-After": {"schema": {"type": "integer"}}}}


#: A registry that cannot be read or written (disk full, database down).
_REGISTRY_DOWN = "The registry cannot be read or written now; nothing was changed"


def _plain_body(description: str, media_type: str, schema_type: str) -> dict[str, Any]:
    """A response whose body is not one of our JSON schemas (text, HTML, this document)."""
    return {"description": description, "content": {media_type: {"schema": {"type": schema_type}}}}


def _operation(
    summary: str,
    responses: dict[str, Any],
    *,
    tags: list[str],
    secured: bool,
    protected: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    answers = dict(responses)
    if secured and protected:
        answers["401"] = _ref("responses", "Unauthorized")
    # Any request may send its body too slowly (web.api reads it first).
    answers["408"] = _ref("responses", "RequestTimeout")
    answers["500"] = _ref("responses", "InternalError")
    operation: dict[str, Any] = {"summary": summary, "tags": tags, "responses": answers, **extra}
    if secured and not protected:
        operation["security"] = []
    return operation


def _schemas() -> dict[str, Any]:
    location = {
        "type": "string",
        "description": "The websocket URL a client connects to: ws[s]://<ingress>/event-stream/<uuid>",
        "pattern": "^wss?://.+/event-stream/[^/]+$",
    }
    replica = {"type": "string", "description": "The answering replica's name (ESS_REPLICA_NAME)"}
    return {
        "Error": {
            "type": "object",
            "required": ["detail"],
            "properties": {"detail": {"type": "string", "description": "Human-readable reason"}},
        },
        "Version": {
            "type": "object",
            "required": ["protocol", "name", "version"],
            "properties": {
                "protocol": {"type": "string", "enum": ["WEBSOCKET"]},
                "name": {"type": "string"},
                "version": {"type": "string"},
            },
        },
        "CreateEventStream": {
            "type": "object",
            "required": ["routing_key"],
            "properties": {
                "routing_key": {
                    "type": "string",
                    "minLength": 1,
                    "description": (
                        f"Any UTF-8 up to {MAX_ROUTING_KEY_BYTES} bytes, without control "
                        "characters, not starting with 'amq.'. Other members are ignored."
                    ),
                }
            },
        },
        "CreatedEventStream": {
            "type": "object",
            "required": ["id", "location"],
            "properties": {"id": {"type": "integer", "minimum": 1}, "location": location},
        },
        "EventStream": {
            "type": "object",
            "required": ["id", "location", "routing_key"],
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "location": location,
                "routing_key": {"type": "string"},
            },
        },
        "EventStreamList": {
            "type": "object",
            "required": ["event_streams"],
            "properties": {
                "event_streams": {
                    "type": "array",
                    "description": "Ordered by id",
                    "items": _ref("schemas", "EventStream"),
                }
            },
        },
        "Live": {
            "type": "object",
            "required": ["status", "replica"],
            "properties": {"status": {"type": "string", "enum": ["ok"]}, "replica": replica},
        },
        "Ready": {
            "type": "object",
            "required": ["status", "replica"],
            "properties": {"status": {"type": "string", "enum": ["ready"]}, "replica": replica},
        },
        "NotReady": {
            "type": "object",
            "required": ["detail", "replica"],
            "properties": {
                "detail": {"type": "string", "description": "Why not"},
                "replica": replica,
            },
        },
        "ActorTree": {
            "type": "object",
            "description": (
                "The supervisor and its children: each node has its kind, name, state, "
                "start time and counters, children nested; the root also names the replica"
            ),
            "additionalProperties": True,
        },
        "Replicas": {
            "type": "object",
            "required": ["replica", "replicas"],
            "properties": {
                "replica": replica,
                "replicas": {
                    "type": "array",
                    "description": "The replicas alive now, the answering one first",
                    "items": {
                        "type": "object",
                        "required": ["id", "name", "websockets", "this"],
                        "properties": {
                            "id": {"type": "string"},
                            "name": {"type": "string"},
                            "started_at": {"type": "number"},
                            "websockets": {"type": "integer", "minimum": 0},
                            "this": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    }


def build_openapi(*, name: str, version: str, secured: bool) -> dict[str, Any]:
    """The OpenAPI document; ``secured`` when a bearer token is configured."""
    stream_id = {
        "name": "stream_id",
        "in": "path",
        "required": True,
        "description": "The event stream's id; a non-integer id is answered 404",
        "schema": {"type": "integer", "minimum": 1},
    }
    api_operation = functools.partial(_operation, tags=["event streams"], secured=secured)
    ops_operation = functools.partial(_operation, tags=["operations"], secured=secured)

    def read_only(
        operation: Callable[..., dict[str, Any]],
        summary: str,
        ok: dict[str, Any],
        operation_id: str,
        **extra: Any,
    ) -> dict[str, Any]:
        """A path answered by ``GET`` alone, ``200`` with ``ok``."""
        return {"get": operation(summary, {"200": ok}, operationId=operation_id, **extra)}

    paths: dict[str, Any] = {
        "/event-stream/version/": read_only(
            api_operation,
            "The service's protocol, name and version",
            _json_body("Version", "The version"),
            "getVersion",
        ),
        "/event-stream/": {
            "post": api_operation(
                "Create an event stream for a routing key",
                {
                    "201": _json_body("CreatedEventStream", "Created"),
                    "413": _error("The body is larger than the limit"),
                    "409": _error(
                        "A queue named after the routing key exists but is not a stream "
                        "queue; it was not used or changed and nothing was recorded"
                    ),
                    "422": _error("The body is not a JSON object or the routing key is invalid"),
                    "503": _retry_later(
                        "The broker cannot be reached, or the registry cannot be written; "
                        "nothing was recorded"
                    ),
                },
                operationId="createEventStream",
                requestBody={
                    "required": True,
                    "description": "Parsed as JSON whatever the Content-Type",
                    "content": {JSON: {"schema": _ref("schemas", "CreateEventStream")}},
                },
            ),
            "get": api_operation(
                "List the event streams, ordered by id",
                {
                    "200": _json_body("EventStreamList", "The event streams"),
                    "503": _retry_later("The registry cannot be read now"),
                },
                operationId="listEventStreams",
            ),
        },
        "/event-stream/{stream_id}": {
            "delete": api_operation(
                "Delete an event stream; answers once its websockets are closed",
                {
                    "204": {"description": "Deleted"},
                    "404": _error("No such event stream"),
                    "503": _retry_later(_REGISTRY_DOWN),
                },
                operationId="deleteEventStream",
                parameters=[stream_id],
            )
        },
        "/health/live": read_only(
            ops_operation,
            "Liveness: the process answers",
            _json_body("Live", "Alive"),
            "getLive",
            protected=False,
        ),
        "/health/ready": {
            "get": ops_operation(
                "Readiness: the registry can be used and the broker connection is up",
                {"200": _json_body("Ready", "Ready"), "503": _json_body("NotReady", "Not ready")},
                protected=False,
                operationId="getReady",
            )
        },
        "/metrics": read_only(
            ops_operation,
            "Prometheus metrics",
            _plain_body("Prometheus text exposition format 0.0.4", "text/plain", "string"),
            "getMetrics",
        ),
        "/debug/actors": read_only(
            ops_operation,
            "The actor tree",
            _json_body("ActorTree", "The tree"),
            "getActorTree",
        ),
        "/debug/replicas": read_only(
            ops_operation,
            "The replicas alive now (SPEC section 7)",
            _json_body("Replicas", "The replicas"),
            "getReplicas",
        ),
        "/debug/": read_only(
            ops_operation,
            "A web page showing the actor tree (it asks for the token itself)",
            _plain_body("HTML", "text/html", "string"),
            "getDebugPage",
            protected=False,
        ),
        "/openapi.json": read_only(
            ops_operation,
            "This document",
            _plain_body("OpenAPI 3.0", JSON, "object"),
            "getOpenApi",
        ),
    }
    components: dict[str, Any] = {
        "schemas": _schemas(),
        "responses": {
            "InternalError": _error("An unexpected error (a bug; the traceback is logged)"),
            "RequestTimeout": _error(
                "The request body did not arrive within the request timeout; the "
                "connection is closed and nothing was done"
            ),
            "Unauthorized": {
                **_error("Missing or wrong bearer token"),
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
            },
        },
    }
    document: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": f"{name} internal API",
            "version": version,
            "description": (
                "Manage event streams (websocket endpoints fed from RabbitMQ stream queues). "
                "Every path also answers with or without a trailing slash. "
                'Errors are always JSON {"detail": "..."}.'
            ),
        },
        "paths": paths,
        "components": components,
    }
    if secured:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document
