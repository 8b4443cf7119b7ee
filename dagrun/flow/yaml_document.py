"""YAML flow files: read safely into the same document a JSON flow file gives, with the line of each place.

Only PyYAML's safe constructors run (a `!!python/...` tag is a problem, never code), and every mapping key
must be a string: YAML 1.1 reads an unquoted `on`, `yes` or `1` key as a boolean or number, which JSON
cannot say. Aliases may repeat a node, but not inside itself, and not into a document of more than
MAX_VALUES values (a "billion laughs" is a problem, not an hour of parsing). Duplicate keys keep the last
value, as in JSON flow files.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from dagrun.errors import FlowError, Problem
from dagrun.flow.problems import decoded, json_type, line_place
from dagrun.flow.references import MAX_NESTING, TOO_DEEP, Loc, format_location

logger = logging.getLogger(__name__)

MAX_VALUES = 1_000_000
# libyaml's parser when PyYAML was built with it: about five times faster; the same nodes and constructors
_LOADER: type[yaml.SafeLoader | yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STRING = "tag:yaml.org,2002:str"
_KINDS = {"bool": "a boolean", "int": "a number", "float": "a number", "null": "null", "timestamp": "a date"}


class YamlDocument(NamedTuple):
    """A YAML flow file's mapping, and the line (from 1) of each place in it, for `parse_flow(lines=...)`."""

    raw: dict[str, Any]
    lines: dict[Loc, int]


def load_yaml(data: str | bytes, *, source: str) -> YamlDocument:
    """The flow document in YAML text `data`; FlowError (naming `source`) with the places of what is wrong:
    YAML syntax, tags, keys that are not strings, aliases, or a document that is not a mapping."""
    text = decoded(data)
    if isinstance(text, Problem):
        raise FlowError([text], source=source)
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise FlowError([Problem("", "the file holds no YAML document: a flow is a mapping")], source=source)
        walk = _Walk(loader, node)
        if walk.problems:
            raise FlowError(
                [problem for _, problem in sorted(walk.problems, key=lambda found: found[0])], source=source
            )
        raw = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise FlowError([_syntax_problem(exc)], source=source) from exc
    except RecursionError:  # the pure-Python parser composes nodes by recursion: far deeper than MAX_NESTING
        raise FlowError([Problem("", TOO_DEEP)], source=source) from None
    finally:
        loader.dispose()
    if not isinstance(raw, dict):
        raise FlowError([Problem("", f"a flow is a mapping, not {json_type(raw)}")], source=source)
    return YamlDocument(raw, walk.lines)


def _syntax_problem(exc: yaml.YAMLError) -> Problem:
    if not isinstance(exc, yaml.MarkedYAMLError):  # the reader's: a character YAML does not allow
        return Problem("", str(exc).splitlines()[0])
    mark = exc.problem_mark or exc.context_mark
    what = ", ".join(part for part in (exc.context, exc.problem) if part) or "not YAML"
    return Problem(f"line {mark.line + 1}, column {mark.column + 1}" if mark else "", what)


class _Walk:
    """One walk over the composed nodes, before anything is constructed: the line of each place, and the
    problems found, each with its line (to sort them in file order)."""

    def __init__(self, loader: yaml.SafeLoader | yaml.CSafeLoader, root: Node) -> None:
        self.loader = loader
        self.lines: dict[Loc, int] = {}
        self.problems: list[tuple[int, Problem]] = []
        self.values = 0
        # depth-first, each node with the ids of the nodes holding it: an alias to one of them is a loop
        stack: list[tuple[Node, Loc, int, frozenset[int]]] = [(root, (), root.start_mark.line + 1, frozenset())]
        while stack and self.values <= MAX_VALUES:
            node, loc, line, holders = stack.pop()
            self.values += 1
            self.lines.setdefault(loc, line)
            if self._is_refused(node, loc, line, holders) or len(loc) > MAX_NESTING:
                continue  # the parser reports a value nested too deep, with its place
            stack.extend(self._children(node, loc, holders | {id(node)}))
        if self.values > MAX_VALUES:
            self._add(1, "", f"its aliases repeat nodes into more than {MAX_VALUES:,} values; write less")

    def _is_refused(self, node: Node, loc: Loc, line: int, holders: frozenset[int]) -> bool:
        if node.tag not in self.loader.yaml_constructors:
            self._add(line, format_location(loc), f"the tag {node.tag!r} is not allowed: a flow is plain data")
        elif id(node) in holders:
            self._add(line, format_location(loc), "an alias to a node that holds it: a flow cannot contain itself")
        else:
            return False
        return True

    def _children(self, node: Node, loc: Loc, holders: frozenset[int]) -> list[tuple[Node, Loc, int, frozenset[int]]]:
        """The nodes `node` holds, last first (so that the walk pops them in file order)."""
        children: list[tuple[Node, Loc, int, frozenset[int]]] = []
        if isinstance(node, SequenceNode):
            children = [
                (item, (*loc, index), item.start_mark.line + 1, holders) for index, item in enumerate(node.value)
            ]
        elif isinstance(node, MappingNode):
            self.loader.flatten_mapping(node)  # `<<` merge keys: their keys become this mapping's
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.tag == _STRING:
                    children.append((value, (*loc, key.value), key.start_mark.line + 1, holders))
                else:
                    self._add(key.start_mark.line + 1, format_location(loc), _key_problem(key))
        return children[::-1]

    def _add(self, line: int, where: str, message: str) -> None:
        self.problems.append((line, Problem(line_place(where, line), message)))


def _key_problem(key: Node) -> str:
    if not isinstance(key, ScalarNode):
        return "a key is a string, not a collection"
    kind = _KINDS.get(key.tag.rpartition(":")[2], f"tagged {key.tag!r}")
    return f"the key {key.value!r} is read as {kind}, not a string: quote it"
