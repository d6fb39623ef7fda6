#!/bin/sh
# Build the decoder's libFuzzer target with clang and run it briefly: any
# input must give a value or an error, never a crash, a leak or UB.
set -eu
src=$1 out=$2 secs=${3:-20}
mkdir -p "$out/corpus"
clang -g -O1 -fsanitize=fuzzer,address,undefined \
  -fno-sanitize-recover=undefined $(pkg-config --cflags luajit) \
  "$src/runtime/fuzz/fuzz_decode.c" "$src/runtime/ser.c" \
  "$src/runtime/ser_enc.c" "$src/runtime/ser_dec.c" "$src/runtime/lser.c" \
  $(pkg-config --libs luajit) -o "$out/fuzz_decode"
# Seeds: valid encodings, so the run starts deep in the format.
luajit "$src/tests/fuzz_seeds.lua" "$out/corpus"
exec "$out/fuzz_decode" -max_total_time="$secs" -rss_limit_mb=2048 \
  -timeout=10 -print_final_stats=1 "$out/corpus"
