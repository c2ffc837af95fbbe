#!/usr/bin/env bash
# Installs what napari needs to open a window on a headless Linux machine: Xvfb, Mesa's
# software OpenGL and Qt's xcb libraries; and python3-venv where python3 cannot make a
# virtual environment (stock Debian/Ubuntu ship python3 without ensurepip). Does nothing where they are already present
# or where this is not a Debian/Ubuntu machine we may install on.
set -euo pipefail
need=(xvfb xauth libgl1 libegl1 libglib2.0-0 libfontconfig1 libxkbcommon-x11-0 libxcb-icccm4
      libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0
      libxcb-xfixes0 libxcb-cursor0 libdbus-1-3 libxi6 libxrender1 libxext6 libsm6 libice6 x11-utils)
missing=()
if command -v dpkg-query >/dev/null; then
  for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
# The Makefile runs this before it creates .venv with `python3 -m venv`.
if command -v dpkg-query >/dev/null && ! "${PY:-python3}" -c "import ensurepip" 2>/dev/null; then
  missing+=(python3-venv)
fi
# Optional: a real T1 head scan (skull, scalp, neck) for the brain segmenter's test, ITK's
# KmeansTest_T1UCharRaw.nii.gz in Debian's insighttoolkit5-examples (1.7 MB, no dependencies).
# Installed on its own after the rest, and never fatal: tests/engine/services/test_brain_heads.py
# skips without it.
want_optional=""
if command -v dpkg-query >/dev/null && ! dpkg-query -W -f='${Status}' insighttoolkit5-examples 2>/dev/null | grep -q "install ok installed"; then
  want_optional=insighttoolkit5-examples
fi
install_optional() {
  [ -n "$want_optional" ] && command -v apt-get >/dev/null || return 0
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get install -y -qq --no-install-recommends "$want_optional" >/dev/null 2>&1 \
    || { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y -qq --no-install-recommends "$want_optional" >/dev/null 2>&1; } \
    || echo "install_system_deps: $want_optional not available; the real-head test will be skipped" >&2
}
trap install_optional EXIT
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "install_system_deps: not a Debian/Ubuntu machine; please install Xvfb, Mesa OpenGL and Qt xcb libraries: ${missing[*]}" >&2
  exit 0
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install_system_deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
