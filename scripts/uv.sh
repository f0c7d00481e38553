#!/usr/bin/env bash
# Runs uv, the installer scripts/venv.sh uses for pinned installs: scripts/uv.sh ARGS...
# uv lives in a venv of its own (.venv-uv), at the version pinned in requirements/uv.txt,
# installed once with pip ($PYTHON, else python3, makes that venv).
#
# uv does not read pip's configuration: the wheel folders pip is configured with (find-links,
# e.g. a machine's local CPU build of torch) are handed to uv, so that both install the same.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-uv
pin=$(grep -E '^uv==' requirements/uv.txt)

if [ "$("$venv/bin/uv" --version 2>/dev/null | cut -d' ' -f2)" != "${pin#uv==}" ]; then
  [ -x "$venv/bin/python" ] || bash scripts/make-venv.sh "${PYTHON:-python3}" "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$pin" >&2
fi
if [ -z "${UV_FIND_LINKS:-}" ]; then
  find_links=${PIP_FIND_LINKS:-$("$venv/bin/python" -m pip config get global.find-links 2>/dev/null || true)}
  [ -n "$find_links" ] && export UV_FIND_LINKS="$find_links"
fi
exec "$venv/bin/uv" "$@"
