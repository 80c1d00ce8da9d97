#!/bin/sh
# make demo: build a pool of MLPs (the tutorial's shape), merge it with every method through
# the fusion_bench command, and show what happened. Usage: sh examples/demo.sh BUILD_DIR
set -eu
B=${1:-build}
mkdir -p "$B/demo"
echo "== 1. the C tutorial (examples/quickstart.c): three MLPs merged through the API"
"$B/quickstart"
echo
echo "== 2. a model pool on disk: _pretrained_ + 3 fine-tuned MLPs 768 -> 3072 -> 768"
"$B/make_pool" "$B/demo" --models 3
echo
for m in simple_average weighted_average task_arithmetic; do
  extra=""
  [ "$m" = weighted_average ] && extra="method.weights=[0.5,0.3,0.2]"
  echo "== fusion_bench method=$m modelpool=$B/demo/pool.yaml $extra"
  "$B/fusion_bench" method=$m modelpool="$B/demo/pool.yaml" $extra \
      merged_model_save_path="$B/demo/merged_$m.safetensors" \
      report_save_path="$B/demo/report_$m.json"
  echo
done
echo "== the same task arithmetic as bf16, sharded Hugging Face style (2 MB shards)"
"$B/fusion_bench" method=task_arithmetic modelpool="$B/demo/pool.yaml" dtype=bf16 \
    merged_model_save_path="$B/demo/merged_bf16" merged_model_max_shard_size=2MB
ls "$B/demo/merged_bf16"
echo
echo "demo: done; outputs and JSON reports are in $B/demo/"
