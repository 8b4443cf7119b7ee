"""`python -m dagrun` is the `dagrun` command."""

from dagrun.cli import entry_point

entry_point()
