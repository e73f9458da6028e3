#!/usr/bin/env bash
# Builds pyfuse3 from its pinned sdist with the patch series applied and installs the wheel into
# the venv. Usage: third_party/pyfuse3/build.sh BIN   (BIN: the venv's bin directory)
# README.md (next to this file) says what each patch does and why.
set -euo pipefail

BIN=$(cd "${1:?usage: build.sh VENV_BIN_DIR}" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VERSION=3.5.0
SDIST=pyfuse3-$VERSION.tar.gz
SHA256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
# The local version label says the installed pyfuse3 carries fusegw's patches (`pip show pyfuse3`);
# bump the number whenever the series changes.
LOCAL_VERSION=$VERSION+fusegw.1
CACHE=$HERE/.cache

die() { echo "third_party/pyfuse3/build.sh: $*" >&2; exit 1; }

mkdir -p "$CACHE"
if [ ! -f "$CACHE/$SDIST" ] || ! echo "$SHA256  $CACHE/$SDIST" | sha256sum -c --quiet - 2>/dev/null; then
  rm -f "$CACHE/$SDIST"
  "$BIN/pip" download -q --no-deps --no-binary :all: --dest "$CACHE" "pyfuse3==$VERSION"
fi
echo "$SHA256  $CACHE/$SDIST" | sha256sum -c --quiet - \
  || die "$SDIST does not have the pinned sha256 $SHA256"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fusegw-pyfuse3.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
tar -xzf "$CACHE/$SDIST" -C "$WORK"
SRC=$WORK/pyfuse3-$VERSION
[ -d "$SRC" ] || die "$SDIST did not unpack to pyfuse3-$VERSION/"

while read -r name; do
  case $name in ''|'#'*) continue ;; esac
  echo "applying $name"
  patch -d "$SRC" -p1 --forward --batch --fuzz=0 --no-backup-if-mismatch --quiet < "$HERE/patches/$name" \
    || die "patch $name does not apply to pyfuse3 $VERSION"
done < "$HERE/series"
# The sdist ships the C file Cython made from the unpatched sources; without it the build has to
# regenerate it from the patched .pyx/.pxi (Cython is in pyfuse3's build requirements).
rm -f "$SRC/src/pyfuse3/__init__.c"

SETUPTOOLS_SCM_PRETEND_VERSION_FOR_PYFUSE3=$LOCAL_VERSION \
  "$BIN/pip" wheel -q --no-deps --wheel-dir "$WORK/dist" "$SRC"
wheel=$(ls "$WORK"/dist/pyfuse3-*.whl)
case $wheel in *"-$LOCAL_VERSION-"*) ;; *) die "built $wheel, not version $LOCAL_VERSION" ;; esac
"$BIN/pip" install -q --force-reinstall --no-deps "$wheel"
# Not `import pyfuse3`: it needs trio, which a fresh venv gets only from `pip install -e .`.
installed=$("$BIN/python" -c 'import importlib.metadata as m; print(m.version("pyfuse3"))')
[ "$installed" = "$LOCAL_VERSION" ] || die "the venv has pyfuse3 $installed, not $LOCAL_VERSION"
echo "installed pyfuse3 $LOCAL_VERSION"
