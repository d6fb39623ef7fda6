# Thin wrapper over CMake: `make run` and `make test` do all the set-up.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBS := luajit libluajit-5.1-dev libffi-dev lua-busted cmake gcc make pkg-config clang

.PHONY: all deps build run test bench install clean asan

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

$(BUILD)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)

build: deps $(BUILD)/Makefile
	cmake --build $(BUILD) -j $(JOBS)

run: build
	$(BUILD)/pcrun examples/pi.lua

test: build
	cd $(BUILD) && ctest --output-on-failure -j 1
	$(MAKE) asan

# The C tests (label c: the embedding API and its examples) again, built
# with AddressSanitizer and UBSan in a build tree of their own. LuaJIT
# itself is not instrumented; forked workers leave by _exit, so only the
# host process runs LeakSanitizer.
ASAN_BUILD ?= $(BUILD)-asan
asan: deps
	cmake -S . -B $(ASAN_BUILD) -DPCR_ASAN=ON -DPCR_FUZZ=OFF $(CMAKE_FLAGS)
	cmake --build $(ASAN_BUILD) -j $(JOBS) --target test_api test_embed test_dict \
	  embed_integrate embed_natives pcrun_core
	cd $(ASAN_BUILD) && UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  ctest --output-on-failure -j 1 -L c

# The shared-array bench sums 800 MB in the arena: map more than 1 GiB
# (reserved lazily, so this costs nothing until used).
bench: build
	PCRUN_ARENA=$${PCRUN_ARENA:-4G} $(BUILD)/pcrun bench/run.lua

install: build
	cmake --install $(BUILD)

clean:
	rm -rf $(BUILD)
