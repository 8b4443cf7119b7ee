"""The wire envelope shared by every transport, and executor discovery by URL scheme."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagrun.contract.context import ContextOp, ContextOpKind
from dagrun.contract.envelope import decode_request, decode_result, encode_request, encode_result
from dagrun.contract.executor import ErrorKind, StepError, StepRequest, StepResult, script_hash
from dagrun.contract.transport import find_transport
from dagrun.errors import ExecutorError

REQUEST = StepRequest("run-1", "load", 2, "outputs['x'] = 1", script_hash("outputs['x'] = 1"), {"n": [1, 2]},
                      {"counter": 3}, "eu", 5.0)  # fmt: skip


def test_requests_and_results_round_trip_through_the_envelope() -> None:
    assert decode_request(encode_request(REQUEST)) == REQUEST
    result = StepResult(
        ok=False,
        outputs={"partial": 1},
        context_ops=(ContextOp(ContextOpKind.INCR, "counter", 1),),
        error=StepError(ErrorKind.SCRIPT, "ValueError", "bad", 3),
        logs="hello\n",
        elapsed_ms=1.5,
        worker_id="w1",
    )
    assert decode_result(encode_result(result)) == result


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
ERRORS = st.builds(StepError, st.sampled_from(ErrorKind), st.text(), st.text(), st.none() | st.integers(1, 10**6))
RESULTS = st.builds(
    StepResult,
    ok=st.booleans(),
    outputs=st.dictionaries(st.text(), JSON_VALUES, max_size=3),
    context_ops=st.lists(st.builds(ContextOp, st.sampled_from(ContextOpKind), st.text(), JSON_VALUES), max_size=3).map(
        tuple
    ),
    error=st.none() | ERRORS,
    logs=st.text(),
    elapsed_ms=st.floats(0, 1e9),
    worker_id=st.text(),
)


@given(RESULTS)
def test_every_result_field_survives_the_wire(result: StepResult) -> None:
    """The result envelope is derived from StepResult's fields: none is lost or added on the way."""
    assert decode_result(encode_result(result)) == result


def test_the_envelopes_carry_exactly_the_fields_of_the_values() -> None:
    """A field added to StepRequest or StepResult travels without touching the envelope code."""
    assert set(orjson.loads(encode_request(REQUEST))) == {"v", *StepRequest._fields}
    assert set(orjson.loads(encode_result(StepResult(ok=True)))) == {"v", *StepResult._fields}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": 2}, "v: Input should be 1"),
        ({"attempt": 0}, "attempt"),
        ({"timeout_s": -1}, "timeout_s"),
        ({"surprise": True}, "surprise: Extra inputs are not permitted"),
    ],
)
def test_a_malformed_request_is_refused_with_what_is_wrong(change: dict[str, object], message: str) -> None:
    document = orjson.loads(encode_request(REQUEST)) | change
    with pytest.raises(ExecutorError, match="malformed request envelope") as caught:
        decode_request(orjson.dumps(document))
    assert message in str(caught.value)


def test_an_oversized_envelope_is_refused_before_parsing() -> None:
    with pytest.raises(ExecutorError, match="over the 100-byte limit"):
        decode_request(encode_request(REQUEST), max_bytes=100)
    with pytest.raises(ExecutorError, match="malformed result envelope"):
        decode_result(b"not json")


def test_transports_are_found_by_scheme_and_unknown_ones_are_named() -> None:
    assert hasattr(find_transport("local"), "open_executor")
    with pytest.raises(ExecutorError, match=r"no executor for scheme 'gopher'; installed: .*local"):
        find_transport("gopher")
