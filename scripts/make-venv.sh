#!/usr/bin/env bash
# Creates the virtual environment of `make demo` / `make test`: scripts/make-venv.sh PYTHON DIR
# [--without-pip] (scripts/venv.sh has uv install pip: seconds faster than ensurepip).
#
# Debian and Ubuntu ship Python's `venv` (its `ensurepip`) in a separate package, so on a bare
# machine `python3 -m venv` fails. In that case this installs `python3.X-venv` (as root, or with
# passwordless sudo), or else uses `virtualenv` if there is one, or else says what to install.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}
without_pip=()
[ "${3:-}" = --without-pip ] && without_pip=(--without-pip)

has_venv() { "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; }

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "kernelenv needs Python 3.11 or newer; '$python' is $("$python" --version 2>&1 || echo missing)." >&2
  echo "Run make with PYTHON=/path/to/python3.11 (or newer)." >&2
  exit 1
fi

if ! has_venv && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo -n"
  version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  echo "Python's venv module is missing (Debian ships it apart): installing python${version}-venv"
  if $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
      --no-install-recommends "python${version}-venv" >/dev/null; then
    :
  else
    echo "could not install python${version}-venv (not root, no passwordless sudo, or no such package)" >&2
  fi
fi

if has_venv; then
  exec "$python" -m venv "${without_pip[@]}" "$venv"
fi
if "$python" -m virtualenv --version >/dev/null 2>&1; then
  exec "$python" -m virtualenv --quiet "$venv"
fi
if command -v virtualenv >/dev/null 2>&1; then
  exec virtualenv --quiet --python "$python" "$venv"
fi
cat >&2 <<EOF
'$python' cannot create a virtual environment: its venv/ensurepip module is missing.
Install it (Debian/Ubuntu: sudo apt-get install python3-venv, or python3.X-venv for your
version), or install virtualenv, then run make again.
EOF
exit 1
