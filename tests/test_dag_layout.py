"""The dashboard's layered layout of a DAG (`flow.layout`): every edge points down, each layer's places are
0..n-1, it is the same every time, and a long chain or a wide fan-out lays out without recursion or blow-up."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dagrun.flow.layout import flow_graph, layered_layout


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[str], dict[str, list[str]]]:
    """Random DAGs: each step depends on some of the steps before it, listed in any order."""
    count = draw(st.integers(1, 40))
    ids = [f"s{index}" for index in range(count)]
    depends_on = {
        step_id: draw(st.lists(st.sampled_from(ids[:index]), unique=True, max_size=4)) if index else []
        for index, step_id in enumerate(ids)
    }
    return draw(st.permutations(ids)), depends_on


@settings(max_examples=200, deadline=None)
@given(dags())
def test_every_edge_points_down_and_each_layer_is_a_row_of_places(dag: tuple[list[str], dict[str, list[str]]]) -> None:
    ids, depends_on = dag
    nodes = layered_layout(ids, depends_on)
    by_id = {node.step_id: node for node in nodes}

    assert [node.step_id for node in nodes] == ids
    for step_id, parents in depends_on.items():
        assert all(by_id[parent].layer < by_id[step_id].layer for parent in parents)
        assert by_id[step_id].layer == 1 + max((by_id[p].layer for p in parents), default=-1)  # as high as it can
    for layer in {node.layer for node in nodes}:
        places = sorted(node.order for node in nodes if node.layer == layer)
        assert places == list(range(len(places)))
    assert layered_layout(ids, depends_on) == nodes


def test_a_chain_of_5000_and_a_fan_out_of_5000_lay_out() -> None:
    chain = [f"s{index}" for index in range(5000)]
    nodes = layered_layout(chain, {step_id: [chain[index - 1]] if index else [] for index, step_id in enumerate(chain)})
    assert nodes[-1].layer == 4999 and {node.order for node in nodes} == {0}
    fan = ["root", *chain]
    nodes = layered_layout(fan, {step_id: ["root"] for step_id in chain})
    assert max(node.order for node in nodes) == 4999


def test_barycenters_uncross_two_crossed_pairs() -> None:
    # a1 feeds b2 and a2 feeds b1: ordering the lower layer by its parents' places uncrosses them.
    nodes = layered_layout(["a1", "a2", "b1", "b2"], {"b1": ["a2"], "b2": ["a1"]})
    order = {node.step_id: node.order for node in nodes}
    assert (order["a1"] < order["a2"]) == (order["b2"] < order["b1"])


def test_a_flow_graph_ignores_what_is_not_a_step_and_dependencies_on_unknown_ids() -> None:
    document = {"steps": [{"id": "a"}, {"id": "b", "depends_on": ["a", "gone", 3]}, "junk", {"no": "id"}]}
    graph = flow_graph(document)
    assert [node["id"] for node in graph["nodes"]] == ["a", "b"] and graph["edges"] == [["a", "b"]]
