"""The wire envelope shared by every transport, and executor discovery by URL scheme."""

from __future__ import annotations

import orjson
import pytest

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
