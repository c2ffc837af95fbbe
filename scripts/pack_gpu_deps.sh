#!/usr/bin/env bash
# Packs the project's dependencies that a GPU machine's own Python may lack into
# .gpusite/site.tar.xz, for a machine that cannot download packages: scripts/gpu_checks.sh unpacks
# it into /tmp/site there. The wheels are fetched here for that machine's Python and processor
# (PY_VERSION, default 3.12; x86-64 Linux) at the versions installed in this checkout's .venv.
#
#   bash scripts/pack_gpu_deps.sh            (about 41 MB; xz because a machine's upload is small)
#
# torch, numpy, scipy, scikit-learn, PyYAML, tqdm, matplotlib and pytest are expected there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}
PKGS=(SimpleITK monai openTSNE psygnal isal nilearn nibabel)
pins=()
for p in "${PKGS[@]}"; do
  v=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$p'))")
  pins+=("$p==$v")
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$tmp/wheels" "${pins[@]}"
mkdir -p "$tmp/site" .gpusite
for w in "$tmp"/wheels/*.whl; do unzip -q -o "$w" -d "$tmp/site"; done
find "$tmp/site" -type d \( -name tests -o -name __pycache__ \) -prune -exec rm -rf {} +
tar cJf .gpusite/site.tar.xz -C "$tmp/site" .
echo "packed ${pins[*]} into .gpusite/site.tar.xz ($(du -h .gpusite/site.tar.xz | cut -f1))"
