#!/bin/sh
# make demo: FusionBench's flagship experiment, rebuilt from data Debian ships.
#   1. the model zoo: a small CLIP-layout vision tower pretrained on a mixture of the tasks'
#      data, then fine-tuned once per task (built once, then reused while its inputs hold),
#   2. every fusion method merges the eight fine-tuned models; the taskpool scores each merged
#      model on every task; rows = methods, columns = tasks + average, as FusionBench prints,
#   3. the Spearman rank correlation of the averages with FusionBench's published B/32 ones,
#      and the ordering checks (bench/fidelity).
# Outputs: outputs/zoo/mixed8/ (the zoo), outputs/zoo_table.{md,json,png} (the table).
# Usage: sh examples/demo.sh BUILD_DIR
set -eu
B=${1:-build}
start=$(date +%s)
echo "== 1. the model zoo (fusion_bench zoo; config/zoo/mixed8.yaml)"
"$B/fusion_bench" zoo
echo
echo "== 2. every method on the zoo (bench/zoo_table; reports in outputs/zoo_table/reports/)"
"$B/bench_zoo_table" --cli "$B/fusion_bench" --zoo outputs/zoo/mixed8 --out outputs
echo
echo "== 3. how the table ranks methods against FusionBench's CLIP-ViT-B/32 table (bench/fidelity)"
"$B/bench_fidelity" outputs/zoo_table.json
echo
echo "demo: done in $(( $(date +%s) - start )) s; the table: outputs/zoo_table.md (and .json, .png)"
