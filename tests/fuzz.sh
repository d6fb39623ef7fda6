#!/bin/sh
# Build the decoder's libFuzzer target with clang and run it: any input
# must give a value or an error, never a crash, a leak, UB or a memory
# blow-up. CMake passes what it found (tests/CMakeLists.txt), so nothing
# here asks pkg-config or PATH:
#   fuzz.sh SRC BUILD LUAJIT CFLAGS LIBS RPATH [SECS]
# LUAJIT runs the seed generator; CFLAGS and LIBS compile and link against
# LuaJIT; RPATH (space-separated dirs) is where the binary finds it at run
# time. SECS defaults to $FUZZ_SECS, else 600 (make fuzz); ctest gives 20.
# FUZZ_MAX_LEN (default 65536) is the largest input tried.
set -eu
src=$1 build=$2 luajit=$3 cflags=$4 libs=$5 rpath=$6
secs=${7:-${FUZZ_SECS:-600}}
maxlen=${FUZZ_MAX_LEN:-65536}
out=$build/fuzz
mkdir -p "$out/corpus"

rp=""
for d in $rpath; do rp="$rp -Wl,-rpath,$d"; done
# shellcheck disable=SC2086  # flags lists split on purpose
clang -g -O1 -fsanitize=fuzzer,address,undefined \
  -fno-sanitize-recover=undefined $cflags \
  "$src/runtime/fuzz/fuzz_decode.c" "$src/runtime/ser.c" \
  "$src/runtime/ser_enc.c" "$src/runtime/ser_dec.c" "$src/runtime/lser.c" \
  $libs $rp -o "$out/fuzz_decode"

# Seeds: valid encodings of every tag, so the run starts deep in the format.
LUA_PATH="$src/lua/?.lua;$src/lua/?/init.lua;;" \
LUA_CPATH="$build/lua/?.so;;" "$luajit" "$src/tests/fuzz_seeds.lua" \
  "$out/corpus"

# The budget: a decode allocates at most ~50 bytes per input byte
# (docs/format.md, Threat model): 64 bytes per byte of the largest input.
# Over the process's own baseline (ASan's shadow, LuaJIT, libFuzzer and
# its corpus: under 100 MB measured, with ASan's quarantine of freed
# mallocs cut from 256 MB to 16), that is the most its RSS may reach, and
# no one malloc may take more.
budget_mb=$(( (maxlen * 64 + 1048575) / 1048576 ))
base_mb=${FUZZ_BASE_RSS_MB:-160}
export ASAN_OPTIONS="quarantine_size_mb=16${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
exec "$out/fuzz_decode" -max_total_time="$secs" -max_len="$maxlen" \
  -rss_limit_mb=$(( base_mb + budget_mb )) -malloc_limit_mb="$budget_mb" \
  -timeout=10 -print_final_stats=1 -artifact_prefix="$out/" "$out/corpus"
