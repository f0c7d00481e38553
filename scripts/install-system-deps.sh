#!/usr/bin/env bash
# Installs the Debian packages the test suite needs at the versions in requirements/debian.txt
# (root, or sudo without a password). `--lock` writes the installed versions to that file.
#
# Debian's archive keeps only a stable release's current version of a package (security updates
# replace the old one), so a pin that the archive no longer offers is reported loudly and the
# archive's version is installed instead: refresh the pins with `make lock`.
set -euo pipefail
cd "$(dirname "$0")/.."
pins=requirements/debian.txt
packages=(procps chromium bubblewrap util-linux)

if [ "${1:-}" = --lock ]; then
  {
    echo "# Debian packages of the test suite, as installed ('make lock' writes this file)."
    for pkg in "${packages[@]}"; do
      echo "$pkg=$(dpkg-query -W -f='${Version}' "$pkg")"
    done
  } >"$pins"
  echo "wrote $pins"
  exit 0
fi

pinned() { [ -f "$pins" ] && sed -n "s/^$1=//p" "$pins" || true; }
wanted=()
for pkg in "${packages[@]}"; do
  version=$(pinned "$pkg")
  have=$(dpkg-query -W -f='${Status} ${Version}' "$pkg" 2>/dev/null || true)
  case $have in
    "install ok installed $version") continue ;;
    "install ok installed "*) [ -z "$version" ] && continue ;;
  esac
  wanted+=("$pkg${version:+=$version}")
done
[ ${#wanted[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo -n"
echo "installing Debian packages: ${wanted[*]}"
$sudo apt-get update -qq
install() { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
if ! install "${wanted[@]}"; then
  echo "WARNING: Debian's archive no longer offers a pinned version in $pins;" \
       "installing its current one. Refresh the pins with 'make lock'." >&2
  install "${wanted[@]%%=*}"
fi
