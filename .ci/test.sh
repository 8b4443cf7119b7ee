#!/usr/bin/env bash
# The test command (README: "Pass the tests"): installs everything the tests need on a fresh machine,
# then lints, type-checks and runs the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (the Redis tests start their own on a free loopback port)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

ruff check .
ruff format --check .
mypy
python3 -m pytest "$@"
