#!/usr/bin/env bash
# GRPO arms side by side on one GPU, from one starting model (e.g. the Sudoku SFT run), each with
# overrides of its own, all on the same training puzzles and the same held-out seeds, each stopped by
# the same wall-clock allowance. Every arm measures the held-out seeds greedily before its first step,
# every eval.every_steps steps and at its last step (OUT/<arm>/heldout/step-N.json, eval.py results);
# the table (OUT/arms.md) pairs each measurement with the arm's first one and the arms' last ones with
# each other (McNemar's exact test).
#
#   launch/ablation_sudoku.sh OUT MODEL SECONDS ARM [ARM ...]      ARM = "name key=value key=value ..."
#
# Step-level credit on and off from the SFT checkpoint, 20 minutes each, vLLM generating:
#   launch/ablation_sudoku.sh runs/ablation runs/sft 1200 "credit grpo.step_advantage_weight=1" \
#       "episode grpo.step_advantage_weight=0"
#
# COMMON holds overrides for every arm (default below: vLLM colocated, a GPU-memory share per arm, 256
# episodes per step, 400 held-out seeds every 5 steps); CONFIG the config (configs/sudoku-sft.yaml);
# PYTHON the interpreter. Side by side, the arms share the GPU: compare their steps, not their speed.
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: $0 OUT MODEL SECONDS ARM [ARM ...]   (ARM: \"name key=value ...\")"
out=${1:?$usage}
model=${2:?$usage}
seconds=${3:?$usage}
shift 3
[[ $# -ge 1 ]] || { echo "$usage" >&2; exit 2; }
config=${CONFIG:-configs/sudoku-sft.yaml}
python=${PYTHON:-python}
share=$(awk -v n=$# 'BEGIN { printf "%.2f", 0.8 / n }')
read -r -a common <<<"${COMMON:-rollout.backend=vllm rollout.vllm.gpu_memory_utilization=$share \
grpo.per_device_train_batch_size=16 grpo.gradient_accumulation_steps=16 grpo.max_steps=1000 \
grpo.lr_scheduler_type=constant grpo.save_steps=5 eval.every_steps=5 eval.during_training=400 log.wandb=off}"
mkdir -p "$out/logs"

pids=()
names=()
for arm in "$@"; do
    read -r -a words <<<"$arm"
    name=${words[0]}
    sets=()
    for kv in "${common[@]}" "grpo.time_limit_s=$seconds" "output_dir=$out" "${words[@]:1}"; do
        sets+=(--set "$kv")
    done
    resume=()
    [[ -n $(ls -d "$out/$name"/checkpoint-* 2>/dev/null) ]] && resume=(--resume)  # a second leg continues
    echo "== arm $name: ${words[*]:1} (log: $out/logs/$name.log)" >&2
    "$python" launch/grpo.py --config "$config" --env sudoku --model "$model" --name "$name" "${resume[@]}" \
        "${sets[@]}" >>"$out/logs/$name.log" 2>&1 &
    pids+=($!)
    names+=("$name")
done
failed=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { echo "arm ${names[$i]} failed; see $out/logs/${names[$i]}.log" >&2; failed=1; }
done
runs=()
for name in "${names[@]}"; do runs+=("$out/$name"); done
"$python" launch/eval.py --heldout "${runs[@]}" | tee "$out/arms.md"
exit $failed
