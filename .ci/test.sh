#!/usr/bin/env bash
# The test command (README: "Pass the tests"). Extra arguments go to pytest.
#   bash .ci/test.sh           installs everything the tests need on a fresh machine, upgrading every package to the
#                              newest the registry serves, then lints, type-checks and runs the whole suite
#   bash .ci/test.sh --lowest  runs the suite in a throwaway venv with each runtime dependency at the lower bound
#                              pyproject.toml states (.ci/lowest_constraints.py); no lint or type check
set -euo pipefail
cd "$(dirname "$0")/.."

lowest=false
if [ "${1:-}" = --lowest ]; then
  lowest=true
  shift
fi

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)  # the Redis tests start their own
command -v openssl >/dev/null 2>&1 || missing+=(openssl)            # TLS tests make a certificate
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)  # tests/ui
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

constraints=$(python3 .ci/lowest_constraints.py)
pip_install=(-m pip install --quiet --disable-pip-version-check)

show_versions() {  # one line in the log: the runtime dependencies this run tests
  local names
  names=$(sed 's/==.*//' <<<"$constraints" | paste -sd '|')
  echo "$1 runtime dependencies: $("$2" -m pip list --format=freeze 2>/dev/null | grep -iE "^($names)==" | paste -sd ' ')"
}

if $lowest; then
  venv=$(mktemp -d)
  trap 'rm -rf "$venv"' EXIT
  python3 -m venv "$venv"
  echo "$constraints" >"$venv/constraints.txt"
  "$venv/bin/python" "${pip_install[@]}" -e '.[test]' -c "$venv/constraints.txt"
  show_versions lowest "$venv/bin/python"
  "$venv/bin/python" -m pytest "$@"
else
  python3 "${pip_install[@]}" --upgrade --upgrade-strategy eager -e '.[test]'
  show_versions newest python3
  python3 -m ruff check .
  python3 -m ruff format --check .
  python3 -m mypy
  lint-imports  # the arrows that must never exist: [tool.importlinter] in pyproject.toml
  python3 -m pytest "$@"
fi
