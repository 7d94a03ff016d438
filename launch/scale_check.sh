#!/usr/bin/env bash
# One GPU, Gemma 3 270M, rollout.backend=vllm: 2 GRPO steps under each shipped accelerate config, then a table
# of each config's peak GPU memory and step time (perf/peak_gpu_mem_gib, perf/step_s of metrics.jsonl, read at
# step 2: the first step includes the vLLM engine's start).
#   launch/scale_check.sh [OUT] [extra --set ...]      (needs: pip install -e ".[gemma,deepspeed]" and vllm)
#   ONLY="fsdp2-lora zero2-lora"  runs only the runs named (default: all seven)
#   RESUME=1                      each run checkpoints at step 2, then a second launch resumes it (--resume) for a
#                                 third step: the table's `resumed` column says whether step 3 trained from there
# Rows: DDP, ZeRO-2, ZeRO-3, ZeRO-3 + CPU offload, with LoRA (the default) and, under ZeRO-3, full
# fine-tuning (lora.enabled=false), and FSDP2. Writes OUT/scale_check.json and prints the Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/scale-check}
shift || true
mkdir -p "$OUT"
ONLY=${ONLY:-}
RESUME=${RESUME:-0}
if [[ "$RESUME" != 0 && "$RESUME" != 1 ]]; then
    echo "RESUME=$RESUME: accepted are 0 (no resume) and 1 (checkpoint at step 2, resume for step 3)" >&2
    exit 2
fi
RUNS=(  # name, accelerate config (configs/accelerate/<config>.yaml), the run's own settings
    "ddp-lora ddp"
    "zero2-lora zero2"
    "zero3-lora zero3"
    "zero3-offload-lora zero3-offload"
    "zero3-full zero3 --set lora.enabled=false"
    "zero3-offload-full zero3-offload --set lora.enabled=false"
    "fsdp2-lora fsdp2"
)
NAMES=$(for spec in "${RUNS[@]}"; do printf '%s ' "${spec%% *}"; done)
NAMES=${NAMES% }
for name in $ONLY; do
    if [[ " $NAMES " != *" $name "* ]]; then
        echo "ONLY names $name: accepted are $NAMES" >&2
        exit 2
    fi
done
launch() {  # name config [args...]
    local name=$1 config=$2
    shift 2
    accelerate launch --config_file "configs/accelerate/$config.yaml" --num_processes 1 \
        launch/grpo.py --env sudoku --name "$name" --set "output_dir=$OUT" --set log.wandb=off \
        --set grpo.save_steps=$((RESUME ? 2 : 100)) --set rollout.backend=vllm \
        --set rollout.vllm.gpu_memory_utilization=0.3 "$@" || echo "$name failed (see above)"
}
run() {  # name config [--set ...]
    local name=$1
    if [[ -n "$ONLY" && " $ONLY " != *" $name "* ]]; then
        return 0
    fi
    launch "$1" "$2" --set grpo.max_steps=2 "${@:3}"
    if ((RESUME)); then
        launch "$1" "$2" --resume --set grpo.max_steps=3 "${@:3}"
    fi
}
for spec in "${RUNS[@]}"; do
    # shellcheck disable=SC2086  # the spec's words are the run's arguments
    run $spec "$@"
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = {}
for run in sorted(p for p in out.iterdir() if (p / "metrics.jsonl").exists()):
    logged = [r for r in map(json.loads, (run / "metrics.jsonl").open()) if "perf/step_s" in r]
    if logged:
        order = [r["step"] for r in logged]  # a resumed run goes on at 3; one that started over logs 1 again
        timed = logged[order.index(2)] if 2 in order else logged[-1]  # step 2: the engine started in step 1
        rows[run.name] = {"steps": order, "peak_gpu_mem_gib": timed.get("perf/peak_gpu_mem_gib"),  # none on CPU
                          "step_s": timed["perf/step_s"], "weight_sync_s": timed.get("rollout/weight_sync_s"),
                          "resumed": order == [1, 2, 3]}
(out / "scale_check.json").write_text(json.dumps(rows, indent=2))
print("| run | steps logged | peak GPU memory (GiB) | step 2 (s) | weight sync (s) | resumed for step 3 |")
print("|---|---|---|---|---|---|")
for name, r in rows.items():
    sync, peak = ("-" if r[k] is None else f"{r[k]:.2f}" for k in ("weight_sync_s", "peak_gpu_mem_gib"))
    steps = ", ".join(map(str, r["steps"]))
    print(f"| {name} | {steps} | {peak} | {r['step_s']:.2f} | {sync} | {'yes' if r['resumed'] else 'no'} |")
PY
