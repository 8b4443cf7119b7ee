import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagrun.errors import FlowError, UnresolvedInput
from dagrun.flow.references import (
    MAX_NESTING,
    TOO_DEEP,
    CompiledInputs,
    MalformedReference,
    Reference,
    compile_inputs,
    escape,
    find_references,
    format_location,
)


def resolve(inputs, flow_inputs=None, outputs_of=None, step_id=None):
    return compile_inputs(inputs, step_id=step_id).resolve(flow_inputs or {}, outputs_of or {})


def test_exact_reference_keeps_the_value_type():
    outputs = {"a": {"rows": [1, 2], "n": 3, "ok": True, "none": None, "doc": {"k": "v"}}}
    inputs = {"rows": "${steps.a.rows}", "n": "${steps.a.n}", "ok": "${steps.a.ok}", "doc": "${steps.a.doc}"}

    assert resolve(inputs, outputs_of=outputs) == {"rows": [1, 2], "n": 3, "ok": True, "doc": {"k": "v"}}
    assert resolve({"x": "${steps.a.none}"}, outputs_of=outputs) == {"x": None}


def test_exact_flow_reference_keeps_the_value_type():
    assert resolve({"r": "${flow.regions}"}, flow_inputs={"regions": ["eu", "us"]}) == {"r": ["eu", "us"]}


def test_references_inside_longer_strings_are_interpolated_as_text():
    outputs = {"a": {"name": "bob", "n": 3, "list": [1, "x"], "flag": False}}
    inputs = {"s": "hi ${steps.a.name}, n=${steps.a.n} ${steps.a.list} ${steps.a.flag} in ${flow.region}"}

    assert resolve(inputs, {"region": "eu"}, outputs) == {"s": 'hi bob, n=3 [1,"x"] false in eu'}


def test_references_inside_nested_lists_and_dicts_are_resolved():
    inputs = {"batch": [{"rows": "${steps.a.rows}", "label": "from ${steps.a.name}"}, 7, ["${flow.k}"]]}
    outputs = {"a": {"rows": [1], "name": "extract"}}

    assert resolve(inputs, {"k": 1.5}, outputs) == {"batch": [{"rows": [1], "label": "from extract"}, 7, [1.5]]}


def test_dict_keys_are_never_templated():
    assert resolve({"m": {"${steps.a.k}": 1}}, outputs_of={"a": {"k": "x"}}) == {"m": {"${steps.a.k}": 1}}


def test_double_dollar_escapes_a_literal_reference():
    assert resolve({"s": "$${steps.a.b}"}) == {"s": "${steps.a.b}"}
    assert resolve({"s": "cost: $${flow.x} is ${flow.x}"}, {"x": 5}) == {"s": "cost: ${flow.x} is 5"}
    assert resolve({"s": ["$${a}"]}) == {"s": ["${a}"]}


@given(st.text(alphabet="${}.abs", max_size=30))
def test_escaped_text_resolves_to_itself(text):
    assert resolve({"t": escape(text)}) == {"t": text}


@given(st.text(alphabet=st.characters(blacklist_characters="$")))
def test_text_without_a_dollar_is_unchanged(text):
    compiled = compile_inputs({"t": text})

    assert compiled.is_static
    assert compiled.resolve({}, {}) == {"t": text}


def test_reference_to_a_step_that_did_not_succeed_resolves_to_none():
    # the step was skipped or failed; this one runs anyway because of its run_if
    inputs = {"exact": "${steps.gone.v}", "text": "got ${steps.gone.v}", "nested": ["${steps.gone.v}"]}

    assert resolve(inputs, outputs_of={}) == {"exact": None, "text": "got null", "nested": [None]}


def test_missing_key_of_a_succeeded_step_raises_unresolved_input_naming_input_step_and_key():
    with pytest.raises(UnresolvedInput) as caught:
        resolve({"n": "${steps.extract.rows}"}, outputs_of={"extract": {"count": 1}}, step_id="load")

    assert str(caught.value) == (
        "step 'load' input 'n': step 'extract' succeeded without output 'rows' (its outputs: count)"
    )


def test_missing_key_inside_interpolated_and_nested_inputs_names_the_place():
    with pytest.raises(UnresolvedInput, match=r"input 'n\[1\]\.x': step 'a' succeeded without output 'k'"):
        resolve({"n": [0, {"x": "v=${steps.a.k}"}]}, outputs_of={"a": {}})


def test_missing_flow_input_raises_unresolved_input():
    with pytest.raises(UnresolvedInput, match="flow input 'region' has no value"):
        resolve({"r": "${flow.region}"}, flow_inputs={})


def test_inputs_without_references_are_static_and_resolve_to_a_fresh_dict():
    inputs = {"a": 1, "b": ["x", {"c": None}], "d": "plain $ text"}
    compiled = compile_inputs(inputs)
    first = compiled.resolve({}, {})
    first["a"] = 2

    assert compiled.is_static
    assert compiled.resolve({}, {}) == inputs


def test_resolution_keeps_input_order():
    inputs = {"z": "${steps.a.v}", "y": 1, "x": "n ${flow.f}", "w": "${flow.f}"}

    assert list(resolve(inputs, {"f": 1}, {"a": {"v": 2}})) == ["z", "y", "x", "w"]


def test_a_join_of_5000_exact_references_resolves_quickly():
    inputs = {f"in{i}": f"${{steps.s{i}.v}}" for i in range(5000)}
    outputs = {f"s{i}": {"v": i} for i in range(5000)}
    compiled = compile_inputs(inputs)

    started = time.monotonic()
    for _ in range(20):
        resolved = compiled.resolve({}, outputs)
    elapsed_s = time.monotonic() - started

    assert resolved["in4999"] == 4999
    assert elapsed_s < 2.0  # about 1 ms per resolution; generous for loaded CI machines


def test_find_references_reports_every_reference_in_document_order_with_its_place():
    value = {"a": "${steps.x.k}", "b": ["t ${flow.f} ${steps.y.z.w}", {"c": "${steps.q.r}"}], "d": 3}

    assert find_references(value, loc=("inputs",)) == [
        Reference("x", "k", "${steps.x.k}", ("inputs", "a")),
        Reference(None, "f", "${flow.f}", ("inputs", "b", 0)),
        Reference("y", "z.w", "${steps.y.z.w}", ("inputs", "b", 0)),
        Reference("q", "r", "${steps.q.r}", ("inputs", "b", 1, "c")),
    ]


def test_escaped_references_are_not_found():
    assert find_references({"a": "$${steps.x.k}", "b": "$${flow.f}"}) == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("${steps.a}", "expected '${steps.ID.KEY}' or '${flow.KEY}'"),
        ("${step.a.b}", "expected '${steps.ID.KEY}' or '${flow.KEY}'"),
        ("${flow.}", "expected '${steps.ID.KEY}' or '${flow.KEY}'"),
        ("${ flow.x }", "expected '${steps.ID.KEY}' or '${flow.KEY}'"),
        ("x ${steps.a.b", "'${' is never closed by '}'"),
    ],
)
def test_malformed_references_are_reported_with_a_reason(text, reason):
    malformed: list[MalformedReference] = []

    assert find_references({"n": text}, malformed=malformed) == []
    assert [(bad.reason, bad.loc) for bad in malformed] == [(reason, ("n",))]


def test_compiling_a_malformed_reference_raises_flow_error():
    with pytest.raises(FlowError, match=r"n: step 'a' malformed reference '\$\{steps\.x\}'"):
        compile_inputs({"n": "${steps.x}"}, step_id="a")


def nested(depth, leaf):
    value = leaf
    for _ in range(depth - 1):
        value = [value]
    return [value]


def test_inputs_nested_past_the_maximum_are_listed_once_each_and_not_walked():
    inputs = {"ok": nested(MAX_NESTING, "${flow.a}"), "deep": [nested(100_000, "${steps.b.c}"), nested(70, 1)]}

    compiled = compile_inputs({"ok": inputs["ok"]})
    assert compiled.too_deep == () and [r.text for r in compiled.references] == ["${flow.a}"]
    compiled = CompiledInputs(inputs)
    assert compiled.too_deep == (("deep",),)
    assert [r.text for r in compiled.references] == ["${flow.a}"]  # nothing is looked for below the maximum
    with pytest.raises(FlowError, match=rf"^<flow>: deep: step 'a' input {re.escape(TOO_DEEP)}$"):
        compile_inputs(inputs, step_id="a")


def test_format_location_writes_json_paths():
    assert format_location(("steps", 3, "depends_on", 0)) == "steps[3].depends_on[0]"
    assert format_location(("steps", 1, "inputs", "my key", "x")) == 'steps[1].inputs["my key"].x'
    assert format_location(()) == ""
