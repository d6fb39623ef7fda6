#!/bin/sh
# Scaling run for a many-core machine without LuaJIT installed: unpack the
# Debian packages carried in .debs, build, run the Mandelbrot scaling table
# and a few pool figures. Output goes to stdout (and $OUT if set).
set -eu
D=/opt/deps
for f in .debs/*.deb; do dpkg -x "$f" $D; done
U=$D/usr
export LD_LIBRARY_PATH=$U/lib/x86_64-linux-gnu PKG_CONFIG_SYSROOT_DIR=$D \
  PKG_CONFIG_PATH=$U/lib/x86_64-linux-gnu/pkgconfig \
  CPATH=$U/include/x86_64-linux-gnu PATH=$U/bin:$PATH
cmake -S . -B /tmp/b -DPCR_FUZZ=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build /tmp/b -j"$(nproc)" >/dev/null
nproc
/tmp/b/pcrun examples/mandelbrot.lua 1600 200 1 2 4 8 16
/tmp/b/pcrun examples/pi.lua 2e9
