#!/bin/sh
# Install the build into a scratch prefix, then build examples/embed
# against it twice: with CMake + pkg-config, and with plain cc + pkg-config.
# usage: install_test.sh BUILD_DIR SOURCE_DIR CMAKE
set -eu
build=$1 src=$2 cmake=${3:-cmake}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$cmake" --install "$build" --prefix "$tmp/prefix" >/dev/null
pc=$(dirname "$(find "$tmp/prefix" -name pcrun.pc | head -n 1)")
test -f "$pc/pcrun.pc" || { echo "pcrun.pc not installed" >&2; exit 1; }
libdir=$(dirname "$pc")
# Prepended: luajit.pc must still come from the LuaJIT the build used.
export PKG_CONFIG_PATH="$pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
# ... and the programs run on that LuaJIT's library, wherever it lies.
ljlib=$(pkg-config --variable=libdir luajit)
export LD_LIBRARY_PATH="$libdir:$ljlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$cmake" -S "$src/examples/embed" -B "$tmp/cm" >/dev/null
"$cmake" --build "$tmp/cm" >/dev/null
"$tmp/cm/embed_integrate"
"$tmp/cm/embed_natives" "$src/examples/embed/natives.lua"
cc -o "$tmp/integrate" "$src/examples/embed/integrate.c" \
  $(pkg-config --cflags pcrun) $(pkg-config --libs pcrun) -lpthread -lm
"$tmp/integrate"
# Linked against the installed shared library, not the build tree's.
ldd "$tmp/integrate" | grep -q "$libdir/libpcrun.so"
got=$(ldd "$tmp/integrate" | awk '/libluajit/ { print $3 }')
[ "$(readlink -f "$got")" = "$(readlink -f "$ljlib/$(basename "$got")")" ] || {
  echo "integrate runs on $got, not on $ljlib's LuaJIT" >&2; exit 1; }
echo "install_test: ok"
