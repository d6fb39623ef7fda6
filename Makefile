# Thin wrapper over CMake: `make run` and `make test` do all the set-up.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBS := luajit libluajit-5.1-dev libffi-dev lua-busted cmake gcc make pkg-config clang \
  lua5.1 luarocks

.PHONY: all deps configure build run test test-repeat bench soak install rock clean asan fuzz

# `make test-repeat 50` (or N=50): the busted suite N times in a row.
ifeq (test-repeat,$(firstword $(MAKECMDGOALS)))
  N := $(or $(word 2,$(MAKECMDGOALS)),$(N),10)
  $(eval $(N):;@:)
endif

all: build

# Install what is missing (Debian/Ubuntu); elsewhere say what is needed.
deps:
	@missing=""; for p in $(DEBS); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	  else \
	    echo "pcrun needs:$$missing (Debian package names); install them" \
	         "with your package manager" >&2; exit 1; \
	  fi; \
	fi

# make install PREFIX=/x: the prefix is compiled in (where pcrun finds its
# Lua modules), so it is a configure flag, not an install-time one.
ifneq ($(PREFIX),)
  override CMAKE_FLAGS += -DCMAKE_INSTALL_PREFIX=$(abspath $(PREFIX))
endif

# Configure again whenever the flags differ from the last configure's, so
# PREFIX or CMAKE_FLAGS given to an existing build tree take effect.
configure: deps
	@if [ ! -f $(BUILD)/Makefile ] || \
	   [ "$$(cat $(BUILD)/.make-flags 2>/dev/null)" != '$(CMAKE_FLAGS)' ]; then \
	  echo cmake -S . -B $(BUILD) $(CMAKE_FLAGS); \
	  cmake -S . -B $(BUILD) $(CMAKE_FLAGS) && \
	  echo '$(CMAKE_FLAGS)' > $(BUILD)/.make-flags; \
	fi

build: configure
	cmake --build $(BUILD) -j $(JOBS)

run: build
	$(BUILD)/pcrun examples/pi.lua

test: build
	cd $(BUILD) && ctest --output-on-failure -j 1
	$(MAKE) asan

# Stops at the first failing run and says which; the specs only (label spec).
test-repeat: build
	@i=0; while [ $$i -lt $(N) ]; do i=$$((i + 1)); \
	  echo "test-repeat: run $$i of $(N)"; \
	  (cd $(BUILD) && ctest -L spec -j 1 --output-on-failure \
	    --stop-on-failure) || { echo "test-repeat: run $$i of $(N)" \
	    "failed ($$((i - 1)) passed before it)"; exit 1; }; \
	done; echo "test-repeat: all $(N) runs passed"

# The C tests (label c: the embedding API and its examples) again, built
# with AddressSanitizer and UBSan in a build tree of their own. LuaJIT
# itself is not instrumented; forked workers leave by _exit, so only the
# host process runs LeakSanitizer.
ASAN_BUILD ?= $(BUILD)-asan
asan: deps
	cmake -S . -B $(ASAN_BUILD) -DPCR_ASAN=ON -DPCR_FUZZ=OFF $(CMAKE_FLAGS)
	cmake --build $(ASAN_BUILD) -j $(JOBS) --target test_api test_embed test_dict test_shm \
	  embed_integrate embed_natives pcrun_core
	cd $(ASAN_BUILD) && UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  ctest --output-on-failure -j 1 -L '^c$$'

# The decoder's libFuzzer run (tests/fuzz.sh), FUZZ_SECS seconds; make test
# runs it for 20 s. New inputs stay in $(BUILD)/fuzz/corpus for next time.
FUZZ_SECS ?= 600
fuzz: build
	FUZZ_SECS=$(FUZZ_SECS) cmake --build $(BUILD) --target fuzz

# The shared-array bench sums 800 MB in the arena: map more than 1 GiB
# (reserved lazily, so this costs nothing until used).
bench: build
	PCRUN_ARENA=$${PCRUN_ARENA:-4G} $(BUILD)/pcrun bench/run.lua

# Ownership under churn and kills (issue 9), minutes: pools left to the
# GC, tasks with workers killed, handles over pipes and queues with kills
# on both sides; arena, RSS, children and fds must come back to the start.
# SOAK_SCALE=0.1 runs a tenth of it.
soak: build
	$(BUILD)/pcrun tests/soak.lua

install: build
	cmake --install $(BUILD)

# The Lua module into a luarocks tree (TREE=dir, default: luarocks' own).
# Debian's luarocks targets Lua 5.2 unless told otherwise; LuaJIT is 5.1.
LUAROCKS ?= luarocks
rock:
	$(LUAROCKS) --lua-version=5.1 make $(if $(TREE),--tree $(abspath $(TREE))) \
	  pcrun-scm-1.rockspec

clean:
	rm -rf $(BUILD)
