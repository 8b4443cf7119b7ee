"""`dagrun completion SHELL`: a completion script for bash, zsh or fish, generated from the argument parser.

So that it cannot fall behind the commands: the sub-commands, options and option choices are read from
`dagrun.cli.build_parser()`. Other words (flow files, run ids) complete as file names. zsh runs the bash
script through its `bashcompinit`; fish gets `complete` lines of its own.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import NamedTuple

SHELLS = ("bash", "zsh", "fish")


class Option(NamedTuple):
    names: tuple[str, ...]  # "-i", "--input"
    help: str
    choices: tuple[str, ...]
    takes_value: bool


class Command(NamedTuple):
    path: tuple[str, ...]  # () for dagrun itself, ("serve", "api") for `dagrun serve api`
    help: str
    options: tuple[Option, ...]
    subcommands: tuple[str, ...]
    choices: tuple[str, ...]  # what its positional arguments may be, when they have choices (`completion`'s shells)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "shell",
        choices=SHELLS,
        help="bash: `source <(dagrun completion bash)` in ~/.bashrc; zsh: the same in ~/.zshrc; "
        "fish: `dagrun completion fish > ~/.config/fish/completions/dagrun.fish`",
    )


def print_completion(args: argparse.Namespace) -> int:
    from dagrun.cli import build_parser

    found = commands(build_parser())
    script = fish_script(found) if args.shell == "fish" else bash_script(found, for_zsh=args.shell == "zsh")
    sys.stdout.write(script)
    return 0


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help_: str = "") -> list[Command]:
    """`parser`'s command and, depth first, every sub-command under it."""
    options: list[Option] = []
    subcommands: list[str] = []
    choices: list[str] = []
    below: list[Command] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                subcommands.append(name)
                below += commands(subparser, (*path, name), helps.get(name, ""))
        elif not action.option_strings:
            choices += map(str, action.choices or ())
        elif action.help != argparse.SUPPRESS:
            values = tuple(map(str, action.choices or ()))
            options.append(Option(tuple(action.option_strings), action.help or "", values, action.nargs != 0))
    return [Command(path, help_, tuple(options), tuple(subcommands), tuple(choices)), *below]


def bash_script(found: list[Command], *, for_zsh: bool = False) -> str:
    """Functions that answer, for the command path typed so far, the words it takes next (sub-commands or
    choices), its options, and the choices of the option just typed; what they do not answer bash completes
    as a file name."""
    words = [(" ".join(c.path), " ".join(c.subcommands + c.choices)) for c in found if c.subcommands + c.choices]
    options = [(" ".join(c.path), " ".join(name for o in c.options for name in o.names)) for c in found]
    choices = [(" ".join((*c.path, name)), " ".join(o.choices)) for c in found for o in c.options for name in o.names]
    script = (
        _BASH.replace("@WORDS@", _bash_cases(words))
        .replace("@OPTIONS@", _bash_cases(options))
        .replace("@CHOICES@", _bash_cases([(key, words) for key, words in choices if words]))
    )
    if for_zsh:
        return (
            f"# zsh completion for dagrun, through bashcompinit\nautoload -U +X bashcompinit && bashcompinit\n{script}"
        )
    return script


def _bash_cases(rows: list[tuple[str, str]]) -> str:
    return "\n".join(f"        {shlex.quote(key)}) echo {shlex.quote(words)} ;;" for key, words in rows)


_BASH = """\
# bash completion for dagrun, generated from its argument parser by `dagrun completion bash`
_dagrun_words() {
    case "$1" in
@WORDS@
    esac
}
_dagrun_options() {
    case "$1" in
@OPTIONS@
    esac
}
_dagrun_choices() {
    case "$1" in
@CHOICES@
    esac
}
_dagrun() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD - 1]}" path="" word words i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${COMP_WORDS[i]}"
        if [[ $word != -* && " $(_dagrun_words "$path") " == *" $word "* ]]; then
            path="${path:+$path }$word"
        fi
    done
    words=$(_dagrun_choices "${path:+$path }$prev")
    if [[ -z $words && $cur == -* ]]; then
        words=$(_dagrun_options "$path")
    elif [[ -z $words ]]; then
        words=$(_dagrun_words "$path")
    fi
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o default -F _dagrun dagrun
"""


def fish_script(found: list[Command]) -> str:
    """One `complete` line per sub-command and per option, each under the condition that the words typed so
    far name its command."""
    lines = ["# fish completion for dagrun, generated from its argument parser by `dagrun completion fish`"]
    helps = {c.path: c.help for c in found}
    for command in found:
        condition = _fish_condition(command)
        for name in command.subcommands:
            help_ = helps.get((*command.path, name), "")
            lines.append(f"complete -c dagrun{condition} -f -a {_fish_quote(name)} -d {_fish_quote(help_)}")
        if command.choices:
            lines.append(f"complete -c dagrun{condition} -f -a {_fish_quote(' '.join(command.choices))}")
        for option in command.options:
            lines.append(f"complete -c dagrun{condition}{_fish_option(option)}")
    return "\n".join(lines) + "\n"


def _fish_condition(command: Command) -> str:
    tests = [f"__fish_seen_subcommand_from {name}" for name in command.path]
    if command.subcommands:
        tests.append(f"not __fish_seen_subcommand_from {' '.join(command.subcommands)}")
    return f" -n {_fish_quote('; and '.join(tests))}" if tests else ""


def _fish_option(option: Option) -> str:
    flags = []
    for name in option.names:
        if name.startswith("--"):
            flags.append(f" -l {name[2:]}")
        elif len(name) == 2:
            flags.append(f" -s {name[1]}")
        else:
            flags.append(f" -o {name[1:]}")
    if option.choices:
        flags.append(f" -x -a {_fish_quote(' '.join(option.choices))}")
    elif option.takes_value:
        flags.append(" -r")
    return "".join(flags) + f" -d {_fish_quote(option.help)}"


def _fish_quote(text: str) -> str:
    """`text` as one fish word: inside single quotes only a backslash and a quote need escaping."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
