#!/bin/sh
# Each documented install route into a scratch prefix, then used as a user
# would: `make install PREFIX=...` (the pcrun binary, require "pcrun" from
# plain luajit, pkg-config) and `luarocks make --tree ...` (require).
# usage: install_routes.sh SOURCE_DIR LUAJIT [LUAROCKS]
# The tests' LUA_PATH points at the checkout: every check here unsets it.
set -eu
src=$1 luajit=$2 luarocks=${3:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "install_routes: $*" >&2; exit 1; }
plain() { env -u LUA_PATH -u LUA_CPATH -u PCRUN_SRC "$@"; }
# check WHAT GOT WANT_FILE: the probe ran pool.lua from WANT_FILE, mapped.
check() {
  f=${2%% *} f=${f#@}
  [ "$(readlink -f "$f")" = "$(readlink -f "$3")" ] &&
    [ "${2#* }" = "1 4 9" ] || fail "$1 ran: $2 (want $3)"
}

# What a script sees from a prefix: where pcrun came from, and a map.
probe='local pcrun = require "pcrun"
local pool = pcrun.pool(2)
local r = pool:map(function(x) return x * x end, { 1, 2, 3 })
pool:close(); pool:join()
io.write(debug.getinfo(pcrun.pool, "S").source, " ", table.concat(r, " "))'

# -- make install PREFIX=... (its own build tree: the suite's is left as is)
p=$tmp/prefix
make -C "$src" install PREFIX="$p" BUILD="$tmp/build" DEBS= JOBS=2 \
  CMAKE_FLAGS="-DPCR_FUZZ=OFF -DLUAJIT_BIN=$luajit" >"$tmp/make.log" 2>&1 ||
  { tail -n 30 "$tmp/make.log" >&2; fail "make install PREFIX=$p failed"; }
test -x "$p/bin/pcrun" || fail "make install PREFIX=$p: no $p/bin/pcrun"
lua=$p/share/lua/5.1/pcrun
test -f "$lua/init.lua" || fail "no $lua/init.lua"
# The installed binary runs the installed modules, never the checkout's.
got=$(cd / && plain "$p/bin/pcrun" -e "$probe")
check "the installed pcrun" "$got" "$lua/pool.lua"
path=$(cd / && plain "$p/bin/pcrun" -e 'io.write(package.path)')
case "$path" in *"$src/lua"*) fail "installed pcrun searches $src/lua";; esac
cmod=$(find "$p" -name core.so -path '*/pcrun/*' | head -n 1)
test -n "$cmod" || fail "make install: no pcrun/core.so"
got=$(cd / && plain LUA_PATH="$p/share/lua/5.1/?.lua;$p/share/lua/5.1/?/init.lua;;" \
  LUA_CPATH="$(dirname "$(dirname "$cmod")")/?.so;;" "$luajit" -e "$probe")
check "luajit with $p" "$got" "$lua/pool.lua"
pc=$(dirname "$(find "$p" -name pcrun.pc | head -n 1)")
libs=$(PKG_CONFIG_PATH="$pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}" \
  pkg-config --libs pcrun)
case " $libs " in *" -lpcrun "*) ;; *) fail "pkg-config --libs pcrun: $libs";; esac
ldir=$(echo "$libs" | sed -n 's/^-L\([^ ]*\) .*/\1/p')
[ "$(readlink -f "$ldir")" = "$(readlink -f "$pc/..")" ] ||
  fail "pkg-config --libs pcrun points at $ldir, not $pc/.."
echo "install_routes: make install PREFIX: ok"

# -- luarocks make --tree ... (Debian's luarocks defaults to Lua 5.2: the
# Makefile's rock target says 5.1)
if [ -z "$luarocks" ]; then
  echo "install_routes: luarocks not found: the luarocks route is not tested"
  exit 0
fi
t=$tmp/rocks
make -C "$src" rock TREE="$t" LUAROCKS="$luarocks" >"$tmp/rock.log" 2>&1 ||
  { tail -n 30 "$tmp/rock.log" >&2; fail "make rock TREE=$t failed"; }
got=$(cd / && plain LUA_PATH="$t/share/lua/5.1/?.lua;$t/share/lua/5.1/?/init.lua;;" \
  LUA_CPATH="$t/lib/lua/5.1/?.so;;" "$luajit" -e "$probe")
check "luajit with the rock" "$got" "$t/share/lua/5.1/pcrun/pool.lua"
echo "install_routes: luarocks make --tree: ok"
