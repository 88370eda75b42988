#!/usr/bin/env bash
# Build what the image installs, without any package index on the host: the project's wheel
# from this checkout plus the wheel of every dependency, for Debian 12's Python (3.11) on the
# image's architecture. Output: ami/wheels/ (or $1), uploaded by the Packer template.
#
#   ami/build-wheels.sh                          # x86_64 (t3, m6i, c6i ...)
#   PAAS_WHEEL_ARCH=aarch64 ami/build-wheels.sh  # arm64 (t4g, m7g ... Graviton)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
OUT=${1:-$HERE/wheels}
ARCH=${PAAS_WHEEL_ARCH:-x86_64}
PYTHON=${PYTHON:-python3}

case "$ARCH" in x86_64 | aarch64) ;; *) echo "PAAS_WHEEL_ARCH must be x86_64 or aarch64" >&2; exit 1 ;; esac
# Debian 12 has glibc 2.36: every manylinux tag up to 2.36 fits (pip does not infer older ones).
platforms=()
for minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${minor}_$ARCH"); done
platforms+=(--platform "manylinux2014_$ARCH")
mkdir -p "$OUT"
rm -f "$OUT"/*.whl
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$OUT" "$REPO"
wheel=$(find "$OUT" -maxdepth 1 -name 'paas-*.whl' | head -n 1)
[ -n "$wheel" ] || { echo "no paas wheel was built in $OUT" >&2; exit 1; }
"$PYTHON" -m pip download --quiet --disable-pip-version-check --dest "$OUT" \
    --only-binary=:all: --python-version 3.11 --implementation cp "${platforms[@]}" \
    "$wheel"
echo "wheels for $ARCH in $OUT: $(find "$OUT" -maxdepth 1 -name '*.whl' | wc -l) files, project $(basename "$wheel")"
