#!/usr/bin/env bash
# make install into a temporary prefix, then use what it installed as a user would, from
# another folder: build examples/quickstart.c with pkg-config and run it, run the installed
# CLI (it must find its configs under share/), import the installed Python package (it must
# load the installed library), check the library exports only fb_ symbols and the man page;
# then make uninstall leaves nothing. Run by tests/test_python.c: install_check.sh SRC BIN TMP.
set -euo pipefail
src=$1 bin=$2 tmp=$3
prefix=$tmp/prefix elsewhere=$tmp/elsewhere
mkdir -p "$elsewhere"
build=$(realpath --relative-to="$src" "$bin")
make -s -C "$src" BUILD="$build" install PREFIX="$prefix" >/dev/null

# C, through pkg-config
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
cc -std=c11 "$src/examples/quickstart.c" $(pkg-config --cflags --libs fusionbench) \
    -o "$tmp/quickstart"
(cd "$elsewhere" && LD_LIBRARY_PATH=$prefix/lib "$tmp/quickstart" >/dev/null)
test -s "$elsewhere/quickstart_merged.safetensors"
# and statically
cc -std=c11 "$src/examples/quickstart.c" -static-libgcc \
    $(pkg-config --cflags fusionbench) "$prefix/lib/libfusionbench.a" \
    $(pkg-config --libs --static fusionbench | sed 's/-lfusionbench//') -o "$tmp/quickstart_static"
(cd "$elsewhere" && "$tmp/quickstart_static" static.safetensors >/dev/null)
cmp "$elsewhere/quickstart_merged.safetensors" "$elsewhere/static.safetensors"

# the CLI, installed, from another folder: configs from PREFIX/share/fusionbench/config
(cd "$elsewhere" && env -u FUSION_BENCH_CONFIG_DIR "$prefix/bin/fusion_bench" --print-config \
    method=ties_merging | grep -q "threshold: 20")
test -f "$prefix/share/man/man1/fusion_bench.1"
if command -v man >/dev/null; then  # rendered, where man-db is installed
    man -l "$prefix/share/man/man1/fusion_bench.1" 2>/dev/null | grep -q "fusion_bench -m"
else
    head -1 "$prefix/share/man/man1/fusion_bench.1" | grep -q '^\.Dd '
fi

# the shared library: versioned soname, only fb_ symbols
readelf -d "$prefix/lib/libfusionbench.so" | grep -q "SONAME.*libfusionbench.so.0"
others=$(nm -D --defined-only "$prefix/lib/libfusionbench.so.0" | awk '$3 !~ /^fb_/ {print $3}')
test -z "$others" || { echo "exported besides fb_: $others"; exit 1; }

# the Python package, installed, loads the installed library
(cd "$elsewhere" && env -u FUSIONBENCH_C_LIB PYTHONPATH="$prefix/lib/python3/dist-packages" \
    /usr/bin/python3 -c "
import fusionbench_c, fusionbench_c.method as m
assert fusionbench_c._lib.lib._name.startswith('$prefix/lib/'), fusionbench_c._lib.lib._name
print(m.TaskArithmeticAlgorithm(scaling_factor=0.3))" | grep -q "scaling_factor=0.3")

make -s -C "$src" BUILD="$build" uninstall PREFIX="$prefix" >/dev/null
left=$(find "$prefix" -type f -o -type l)
test -z "$left" || { echo "left after uninstall: $left"; exit 1; }
echo "install ok"
