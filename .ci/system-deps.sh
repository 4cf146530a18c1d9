#!/usr/bin/env bash
# System packages of the workbench. Required for the tests and the demo builder: espeak-ng + sox (speech
# synthesis). Wanted everywhere: libsndfile1 (audio I/O; the soundfile wheel carries its own copy) and a CJK font
# (Chinese text in plots). As root with apt-get, installs whatever is missing. Otherwise prints the line to run,
# and fails only when a required one is missing.
#   usage: system-deps.sh [--required-none]   (make demo: nothing here is required to run the demo)
set -euo pipefail
required=(espeak-ng sox)
[ "${1:-}" = "--required-none" ] && required=()
pkgs=(espeak-ng sox libsndfile1 fonts-wqy-microhei)
has() {  # a package, by dpkg where there is one, else by its command or files
  if command -v dpkg-query >/dev/null; then
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
  else
    case "$1" in
      espeak-ng|sox) command -v "$1" >/dev/null ;;
      libsndfile1) ldconfig -p 2>/dev/null | grep -q libsndfile ;;
      fonts-wqy-microhei) fc-list 2>/dev/null | grep -qi wqy ;;
    esac
  fi
}
missing=()
for p in "${pkgs[@]}"; do has "$p" || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing system packages: ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  exit 0
fi
echo "missing system packages: ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
for p in "${required[@]}"; do
  for m in "${missing[@]}"; do
    if [ "$p" = "$m" ]; then
      echo "$p is needed here (the tests synthesize speech with espeak-ng and sox)" >&2
      exit 1
    fi
  done
done
echo "(going on without them)" >&2
