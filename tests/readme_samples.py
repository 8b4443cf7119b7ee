"""The README's samples as data, for tests/test_readme.py: its fenced code blocks with their language, the
commands of its shell blocks (each synopsis expanded into the commands it stands for), its links, the file
paths and `dagrun` commands its code spans name, and the anchors its headings get on GitHub.

Markdown is read with markdown-it-py (rich's own dependency), so a link or a fence is what GitHub sees.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.token import Token

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}

_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")  # `[--json]`, `[--from-failed | --from STEP...]`
_ALTERNATIVES = re.compile(r"(?<!\S)[\w-]+(?:\|[\w-]+)+(?!\S)")  # `dot|mermaid`, `status|pause|...`
_COMMENT = re.compile(r"\s+#\s.*$")
_RELATIVE_PATH = re.compile(r"[\w.-]+(?:/[\w.-]+)+/?")  # `flows/scripts/`, `../x/y.md`; not `/etc/...`, URLs


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced code block: its info string's first word ('' for a plain fence) and its first line."""

    language: str
    text: str
    line: int


@dataclass(frozen=True, slots=True)
class ShellCommand:
    """One command of a shell block as a reader would type it: no prompt, comment, `source <(...)` or
    output redirection (its output goes to the test instead)."""

    text: str
    line: int


def _tokens(text: str) -> list[Token]:
    return MarkdownIt("commonmark").parse(text)


def _line(token: Token) -> int:
    return token.map[0] + 1 if token.map else 0


def code_blocks(text: str) -> list[Block]:
    return [
        Block(token.info.split()[0] if token.info.strip() else "", token.content, _line(token))
        for token in _tokens(text)
        if token.type == "fence"
    ]


def _inline_children(text: str) -> Iterator[tuple[int, Token]]:
    for token in _tokens(text):
        if token.type == "inline":
            for child in token.children or []:
                yield _line(token), child


def links(text: str) -> list[tuple[int, str]]:
    """Each link's and image's (line, target)."""
    found = []
    for line, child in _inline_children(text):
        if child.type == "link_open":
            found.append((line, str(child.attrs["href"])))
        elif child.type == "image":
            found.append((line, str(child.attrs["src"])))
    return found


def path_spans(text: str) -> list[tuple[int, str]]:
    """Code spans that name a file by a relative path (`benchmarks/bench_local.py`): (line, path)."""
    return [
        (line, child.content)
        for line, child in _inline_children(text)
        if child.type == "code_inline" and _RELATIVE_PATH.fullmatch(child.content)
    ]


def command_spans(text: str) -> list[tuple[int, str]]:
    """Code spans in the text that show a `dagrun` command (`dagrun status last`): (line, command)."""
    return [
        (line, child.content)
        for line, child in _inline_children(text)
        if child.type == "code_inline" and child.content.startswith("dagrun ")
    ]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    tokens = _tokens(text)
    return {slug(tokens[i + 1].content) for i, token in enumerate(tokens) if token.type == "heading_open"}


def _unwrapped(command: str) -> str:
    sourced = re.fullmatch(r"source <\((.*)\)", command)
    command = sourced.group(1) if sourced else command
    return re.sub(r"\s+>\s+\S+$", "", command).strip()


def shell_commands(block: Block) -> list[ShellCommand]:
    """The commands of a shell block, one per line or per `&&` part; comment lines are skipped."""
    commands = []
    for offset, raw in enumerate(block.text.splitlines(), start=1):
        code = _COMMENT.sub("", raw.strip().removeprefix("$ "))
        if code and not code.startswith("#"):
            parts = code.split(" && ")
            commands += [ShellCommand(_unwrapped(part), block.line + offset) for part in parts]
    return commands


def _filled(pattern: re.Pattern[str], text: str, choice: tuple[str, ...]) -> str:
    """`text` with its matches of `pattern` replaced by the items of `choice`, in order."""
    parts = iter(choice)
    return pattern.sub(lambda _: next(parts), text)


def _each_alternative(command: str) -> list[str]:
    words = _ALTERNATIVES.findall(command)
    return [_filled(_ALTERNATIVES, command, choice) for choice in itertools.product(*(w.split("|") for w in words))]


def synopsis_variants(command: str) -> list[str]:
    """The commands a synopsis stands for: without its optional `[...]` parts, and with all of them (once
    per alternative of a `[a | b]`); each `a|b` word as each of its alternatives. Order kept, no repeats."""
    groups = _OPTIONAL.findall(command)
    forms = [_OPTIONAL.sub("", command)]
    forms += [_filled(_OPTIONAL, command, choice) for choice in itertools.product(*(g.split(" | ") for g in groups))]
    variants = [" ".join(variant.split()) for form in forms for variant in _each_alternative(form)]
    return list(dict.fromkeys(variants))
