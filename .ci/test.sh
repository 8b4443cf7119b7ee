#!/usr/bin/env bash
# The test command (README: "Pass the tests"): installs everything the tests need on a fresh machine,
# then lints, type-checks and runs the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)  # the Redis tests start their own
command -v openssl >/dev/null 2>&1 || missing+=(openssl)            # TLS tests make a certificate
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

ruff check .
ruff format --check .
mypy
python3 -m pytest "$@"
