# FusionBench-C build. `make demo` and `make test` are the two commands a fresh machine needs:
# each first installs missing Debian packages (as root) or says which to install.

CC       ?= gcc
BUILD    ?= build
PYTHON   ?= /usr/bin/python3
PKGS     := yaml-0.1 libcjson openblas lapacke zlib stb
DEB_LIBS := pkg-config libyaml-dev libcjson-dev libopenblas-dev liblapacke-dev zlib1g-dev libstb-dev
DEB_TEST := python3-torch python3-numpy python3-pil
DEB_DATA := dataset-fashion-mnist python3-sklearn fonts-dejavu-core fonts-dejavu-extra

OPT      ?= -O3
WARN     := -Wall -Wextra -Werror -Wno-unknown-pragmas -Wno-format-truncation
CFLAGS   += -std=c11 -D_GNU_SOURCE $(OPT) -g $(WARN) -fopenmp -ffp-contract=off -fno-trapping-math -fPIC \
            -Iinclude -Isrc $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS   += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -lpthread
LDFLAGS  += -fopenmp

LIB_SRC  := $(wildcard src/core/*.c src/io/*.c src/config/*.c src/pool/*.c src/method/*.c src/nn/*.c src/mergekit/*.c src/text/*.c)
CLI_SRC  := $(wildcard src/cli/*.c)
TEST_SRC := $(wildcard tests/*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
LIB      := $(BUILD)/libfusionbench.a
SOVER    := 0
SONAME   := libfusionbench.so.$(SOVER)
SOLIB    := $(BUILD)/libfusionbench.so.0.1.0
CLI      := $(BUILD)/fusion_bench
TESTS    := $(BUILD)/fb_tests
EXAMPLES := $(BUILD)/quickstart $(BUILD)/make_pool
BENCHES  := $(BUILD)/bench_merge $(BUILD)/bench_nn $(BUILD)/bench_zoo_table $(BUILD)/bench_adamerging \
            $(BUILD)/bench_torch_bin \
            $(BUILD)/bench_scale $(BUILD)/bench_eval $(BUILD)/bench_smile $(BUILD)/bench_wemoe $(BUILD)/bench_fidelity
DEPS_OK  := $(BUILD)/.deps-ok
TDEPS_OK := $(BUILD)/.test-deps-ok
DATA_OK  := $(BUILD)/.data-deps-ok

.SECONDARY:
.PHONY: all deps test-deps test test-sanitize fuzz demo bench clean format install uninstall
all: $(CLI) $(EXAMPLES) $(SOLIB)

# Missing Debian packages: installed when root, else named. The stamp keeps it to one check.
define need_debs
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing Debian packages:$$missing (run: sudo apt-get install$$missing)"; exit 1; fi; \
	fi
endef

$(DEPS_OK):
	@mkdir -p $(BUILD)
	$(call need_debs,$(DEB_LIBS))
	@touch $@
$(DATA_OK): $(DEPS_OK)
	$(call need_debs,$(DEB_DATA))
	@touch $@
$(TDEPS_OK): $(DATA_OK)
	$(call need_debs,$(DEB_TEST))
	@touch $@
deps: $(DEPS_OK)
test-deps: $(TDEPS_OK)

$(BUILD)/%.o: %.c $(DEPS_OK)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(LIB): $(LIB_OBJ)
	$(AR) rcs $@ $^
# The shared library: only the public fb_ symbols are exported (src/fusionbench.map).
$(SOLIB): $(LIB_OBJ) src/fusionbench.map
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=src/fusionbench.map $(LDFLAGS) \
	    $(LIB_OBJ) $(LDLIBS) -o $@
	ln -sf $(notdir $@) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $(BUILD)/libfusionbench.so
$(CLI): $(CLI_OBJ) $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@
$(TESTS): $(TEST_OBJ) $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@
$(BUILD)/%: $(BUILD)/examples/%.o $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@
$(BUILD)/bench_%: $(BUILD)/bench/%.o $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# Reference data from PyTorch, then every test; the runner's last line is "N passed, N failed".
test: $(TDEPS_OK) $(CLI) $(TESTS) $(EXAMPLES) $(BENCHES) $(SOLIB)
	@rm -rf $(BUILD)/ref && mkdir -p $(BUILD)/ref
	$(PYTHON) tests/reference/make_reference.py $(BUILD)/ref
	$(PYTHON) tests/reference/nn_reference.py $(BUILD)/ref
	$(PYTHON) tests/reference/mergekit_ref.py $(BUILD)/ref
	$(PYTHON) tests/reference/clip_text_ref.py $(BUILD)/ref
	$(PYTHON) tests/reference/smile_ref.py $(BUILD)/ref
	$(PYTHON) tests/reference/wemoe_ref.py $(BUILD)/ref
	$(TESTS) --ref $(BUILD)/ref --cli $(CLI) --bin $(BUILD)

# The whole suite under AddressSanitizer, UndefinedBehaviorSanitizer and LeakSanitizer, in a
# separate build folder.
test-sanitize: $(TDEPS_OK)
	$(MAKE) BUILD=build-san OPT="-O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	    LDFLAGS="-fopenmp -fsanitize=address,undefined" test

# Fuzzing (clang's libFuzzer, with ASan and UBSan): each target runs FUZZ_SECONDS from the seeds
# in tests/fuzz/corpus/<target>; crashes are saved as build-fuzz/crash-<target>-*. A crash
# found becomes a file in tests/data/bad/ with the error it must give (run by make test).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := safetensors index config hfconfig idx image ties torchbin
FUZZ_FLAGS   := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined
fuzz: $(DEPS_OK)
	$(MAKE) BUILD=build-fuzz CC=clang WARN="-Wall -Wextra -Werror -Wno-unknown-pragmas" \
	    OPT="$(FUZZ_FLAGS) -fsanitize=fuzzer-no-link" build-fuzz/libfusionbench.a
	@set -e; for t in $(FUZZ_TARGETS); do \
	  clang -std=c11 -D_GNU_SOURCE $(FUZZ_FLAGS) -fsanitize=fuzzer -fopenmp -Iinclude -Isrc \
	    $$(pkg-config --cflags $(PKGS)) tests/fuzz/fuzz_$$t.c build-fuzz/libfusionbench.a \
	    $$(pkg-config --libs $(PKGS)) -lm -lpthread -o build-fuzz/fuzz_$$t; \
	done
	@set -e; for t in $(FUZZ_TARGETS); do \
	  mkdir -p build-fuzz/corpus/$$t; \
	  echo "== fuzz_$$t for $(FUZZ_SECONDS) s"; \
	  build-fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	    -artifact_prefix=build-fuzz/crash-$$t- build-fuzz/corpus/$$t tests/fuzz/corpus/$$t \
	    2>&1 | grep -E "^#[0-9]+ *DONE|stat::number_of_executed_units|cov:|ERROR|SUMMARY" | tail -4; \
	done

# The main job: the model zoo (trained once, then reused) merged by every method, scored on
# every task; the table goes to outputs/zoo_table.{md,json,png}.
demo: $(DATA_OK) $(CLI) $(EXAMPLES) $(BUILD)/bench_zoo_table $(BUILD)/bench_fidelity
	@sh examples/demo.sh $(BUILD)

bench: $(BENCHES) $(CLI)
	$(BUILD)/bench_merge --cli $(CLI)

format:
	clang-format -i include/*.h src/*/*.[ch] tests/*.[ch] bench/*.c examples/*.c

# make install PREFIX=/usr/local DESTDIR=: the CLI, the libraries, the header, pkg-config's
# fusionbench.pc, the config tree, the man page and the Python package (docs/python.md).
PREFIX  ?= /usr/local
PYDIR   ?= $(PREFIX)/lib/python3/dist-packages
install: $(CLI) $(LIB) $(SOLIB)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include \
	    $(DESTDIR)$(PREFIX)/share/fusionbench $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PYDIR)
	install -m 755 $(CLI) $(DESTDIR)$(PREFIX)/bin/fusion_bench
	install -m 644 $(LIB) $(DESTDIR)$(PREFIX)/lib/libfusionbench.a
	install -m 755 $(SOLIB) $(DESTDIR)$(PREFIX)/lib/
	ln -sf $(notdir $(SOLIB)) $(DESTDIR)$(PREFIX)/lib/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(PREFIX)/lib/libfusionbench.so
	install -m 644 include/fusionbench.h $(DESTDIR)$(PREFIX)/include/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@REQUIRES@|$(PKGS)|' fusionbench.pc.in \
	    > $(DESTDIR)$(PREFIX)/lib/pkgconfig/fusionbench.pc
	rm -rf $(DESTDIR)$(PREFIX)/share/fusionbench/config
	cp -r config $(DESTDIR)$(PREFIX)/share/fusionbench/config
	install -m 644 docs/fusion_bench.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	rm -rf $(DESTDIR)$(PYDIR)/fusionbench_c
	cp -r python/fusionbench_c $(DESTDIR)$(PYDIR)/fusionbench_c
	find $(DESTDIR)$(PYDIR)/fusionbench_c -name __pycache__ -prune -exec rm -rf {} +
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/fusion_bench $(DESTDIR)$(PREFIX)/lib/libfusionbench.a \
	    $(DESTDIR)$(PREFIX)/lib/$(notdir $(SOLIB)) $(DESTDIR)$(PREFIX)/lib/$(SONAME) \
	    $(DESTDIR)$(PREFIX)/lib/libfusionbench.so $(DESTDIR)$(PREFIX)/include/fusionbench.h \
	    $(DESTDIR)$(PREFIX)/lib/pkgconfig/fusionbench.pc $(DESTDIR)$(PREFIX)/share/man/man1/fusion_bench.1
	rm -rf $(DESTDIR)$(PREFIX)/share/fusionbench $(DESTDIR)$(PYDIR)/fusionbench_c

clean:
	rm -rf $(BUILD)

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TEST_OBJ:.o=.d)
