"""Event formatting (SPEC section 4): properties and examples."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from actors.formatting import EventClock, Poison, Skip, Text, ess_timestamp, format_event

ordinals = st.integers(min_value=1, max_value=2**63)
timestamps = st.integers(min_value=0, max_value=2**53)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(), json_values, max_size=6)

COMPACT = (",", ":")


def expected_json(obj: dict[str, Any], ordinal: int, timestamp: int) -> str:
    expected = dict(obj)
    expected["ess_ordinal"] = ordinal
    expected["ess_timestamp"] = timestamp
    return json.dumps(expected, ensure_ascii=False, separators=COMPACT)


def holds_a_float(value: object) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(holds_a_float(v) for v in value.values())
    if isinstance(value, list):
        return any(holds_a_float(v) for v in value)
    return False


@given(json_objects, ordinals, timestamps, st.booleans(), st.booleans())
def test_json_objects_keep_every_key_and_gain_the_two(
    obj: dict[str, Any], ordinal: int, timestamp: int, ascii_only: bool, spaced: bool
) -> None:
    body = json.dumps(obj, ensure_ascii=ascii_only, indent=2 if spaced else None).encode()
    result = format_event(body, ordinal, timestamp)
    assert isinstance(result, Text)
    parsed = json.loads(result.text)
    for key, value in obj.items():
        if key not in ("ess_ordinal", "ess_timestamp"):
            assert parsed[key] == value
    assert parsed["ess_ordinal"] == ordinal
    assert parsed["ess_timestamp"] == timestamp
    assert set(parsed) == set(obj) | {"ess_ordinal", "ess_timestamp"}
    # compact, and non-ASCII characters are kept as they are (not \u-escaped)
    expected = expected_json(obj, ordinal, timestamp)
    if holds_a_float(obj):
        # A float may be written in another shortest form (orjson's): the same double.
        assert json.dumps(parsed, ensure_ascii=False, separators=COMPACT) == expected
    else:
        assert result.text == expected
    result.text.encode("utf-8")


@pytest.mark.parametrize("depth", [254, 255, 300, 600])
def test_deep_objects_are_formatted_at_any_depth_python_reads(depth: int) -> None:
    body = b'{"a":' * depth + b"1" + b"}" * depth
    result = format_event(body, 1, 2)
    assert isinstance(result, Text)
    assert result.text == body.decode()[:-1] + ',"ess_ordinal":1,"ess_timestamp":2}'


@pytest.mark.parametrize(
    "number", ["123456789012345678901234567890", "-9223372036854775809", "18446744073709551616"]
)
def test_integers_beyond_64_bits_keep_every_digit(number: str) -> None:
    result = format_event(f'{{"n": {number}, "s": "x"}}'.encode(), 1, 2)
    assert result == Text(f'{{"n":{number},"s":"x","ess_ordinal":1,"ess_timestamp":2}}')


@given(st.text(), ordinals, timestamps)
def test_text_bodies_get_the_suffix(text: str, ordinal: int, timestamp: int) -> None:
    assume(not text.startswith("{") and text != "POISON")
    result = format_event(text.encode(), ordinal, timestamp)
    suffix = f"|ordinal: {ordinal}|timestamp: {timestamp}"
    assert isinstance(result, Text)
    assert result.text.startswith(text)
    assert result.text.endswith(suffix)
    assert result.text == text + suffix


@given(st.binary(), ordinals, timestamps)
def test_invalid_utf8_is_always_skipped(body: bytes, ordinal: int, timestamp: int) -> None:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        assert isinstance(format_event(body, ordinal, timestamp), Skip)
    else:
        if not body.startswith(b"{"):
            assert not isinstance(format_event(body, ordinal, timestamp), Skip)


@given(st.binary(min_size=1).map(lambda b: b"{" + b"\xff" + b))
def test_invalid_utf8_json_is_skipped(body: bytes) -> None:
    assert isinstance(format_event(body, 1, 1), Skip)


@given(st.text(), ordinals, timestamps)
def test_brace_bodies_that_are_not_json_objects_are_skipped(
    tail: str, ordinal: int, timestamp: int
) -> None:
    text = "{" + tail
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    assume(not isinstance(value, dict))
    assert isinstance(format_event(text.encode(), ordinal, timestamp), Skip)


@given(st.binary(), ordinals, timestamps)
def test_any_body_formats_to_sendable_text_or_a_decision(
    body: bytes, ordinal: int, timestamp: int
) -> None:
    result = format_event(body, ordinal, timestamp)
    assert isinstance(result, Text | Skip | Poison)
    if isinstance(result, Text):
        result.text.encode("utf-8")  # always sendable as a text frame


def test_poison_is_exact() -> None:
    assert format_event(b"POISON", 3, 4) == Poison()
    for near in (b"POISON\n", b" POISON", b"poison", b"POISONED"):
        assert isinstance(format_event(near, 3, 4), Text)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a": 1}', '{"a":1,"ess_ordinal":5,"ess_timestamp":7}'),
        (b"{}", '{"ess_ordinal":5,"ess_timestamp":7}'),
        ('{"é": "ü €"}'.encode(), '{"é":"ü €","ess_ordinal":5,"ess_timestamp":7}'),
        (b'{"ess_ordinal": "x", "b": [1]}', '{"ess_ordinal":5,"b":[1],"ess_timestamp":7}'),
        (b"DataManagerEvent|type: 1", "DataManagerEvent|type: 1|ordinal: 5|timestamp: 7"),
        (b"", "|ordinal: 5|timestamp: 7"),
        (b"[1, 2]", "[1, 2]|ordinal: 5|timestamp: 7"),
        # leading whitespace: not "starting with {" -> forwarded as text
        (b' {"a": 1}', ' {"a": 1}|ordinal: 5|timestamp: 7'),
    ],
)
def test_examples(body: bytes, expected: str) -> None:
    assert format_event(body, 5, 7) == Text(expected)


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"a": 1} trailing', b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1e400}', b"{'a': 1}"],
)
def test_brace_bodies_skipped(body: bytes) -> None:
    assert isinstance(format_event(body, 1, 1), Skip)


def test_lone_surrogate_escapes_stay_escaped() -> None:
    result = format_event(b'{"a": "\\ud800x", "b": "\xc3\xa9"}', 1, 2)
    assert isinstance(result, Text)
    result.text.encode("utf-8")
    assert json.loads(result.text) == {
        "a": "\ud800x",
        "b": "é",
        "ess_ordinal": 1,
        "ess_timestamp": 2,
    }


def test_deeply_nested_json_is_skipped_not_crashing() -> None:
    body = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert isinstance(format_event(body, 1, 1), Skip)


@given(st.integers(0, 2**50) | st.none(), st.integers(0, 2**50), st.integers(0, 2**50) | st.none())
def test_ess_timestamp_prefers_own_and_never_decreases(
    own: int | None, received: int, previous: int | None
) -> None:
    value = ess_timestamp(own, received, previous)
    candidate = own if own is not None else received
    assert value == max(candidate, previous if previous is not None else candidate)


@given(st.lists(st.tuples(st.integers(0, 2**45) | st.none(), st.integers(0, 2**45)), max_size=30))
def test_event_clock_is_monotonic(events: list[tuple[int | None, int]]) -> None:
    clock = EventClock()
    stamps = []
    for own, received in events:
        stamp = clock.peek(own, received)
        assert stamp >= (own if own is not None else received)
        clock.commit(stamp)
        stamps.append(stamp)
    assert stamps == sorted(stamps)


def test_event_clock_peek_does_not_advance() -> None:
    clock = EventClock()
    assert clock.peek(100, 0) == 100
    assert clock.peek(50, 0) == 50  # nothing committed yet
    clock.commit(100)
    assert clock.peek(50, 0) == 100
    assert clock.peek(None, 200) == 200
