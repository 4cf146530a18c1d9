#!/usr/bin/env bash
# System packages the workbench needs: espeak-ng + sox (demo builder), libsndfile (audio I/O),
# a CJK font (Chinese text in plots). Installs them when run as root with apt-get; otherwise
# prints the line to run.
set -euo pipefail
pkgs=(espeak-ng sox libsndfile1 fonts-wqy-microhei)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing system packages: ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "missing system packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
