#!/usr/bin/env bash
# One GPU, Gemma 3 270M, rollout.backend=vllm: 2 GRPO steps under each shipped accelerate config, then a table
# of each config's peak GPU memory and step time (perf/peak_gpu_mem_gib, perf/step_s of metrics.jsonl; the
# first step includes the vLLM engine's start, so the table reads the last step).
#   launch/scale_check.sh [OUT] [extra --set ...]      (needs: pip install -e ".[gemma,deepspeed]" and vllm)
# Rows: DDP, ZeRO-2, ZeRO-3, ZeRO-3 + CPU offload, with LoRA (the default) and, under ZeRO-3, full
# fine-tuning (lora.enabled=false). Writes OUT/scale_check.json and prints the Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/scale-check}
shift || true
mkdir -p "$OUT"
run() {  # name config [--set ...]
    local name=$1 config=$2
    shift 2
    accelerate launch --config_file "configs/accelerate/$config.yaml" --num_processes 1 \
        launch/grpo.py --env sudoku --name "$name" --set "output_dir=$OUT" --set log.wandb=off \
        --set grpo.max_steps=2 --set grpo.save_steps=100 --set rollout.backend=vllm \
        --set rollout.vllm.gpu_memory_utilization=0.3 "$@" || echo "$name failed (see above)"
}
run ddp-lora ddp "$@"
run zero2-lora zero2 "$@"
run zero3-lora zero3 "$@"
run zero3-offload-lora zero3-offload "$@"
run zero3-full zero3 --set lora.enabled=false "$@"
run zero3-offload-full zero3-offload --set lora.enabled=false "$@"
run fsdp2-lora fsdp2 "$@"
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = {}
for run in sorted(p for p in out.iterdir() if (p / "metrics.jsonl").exists()):
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").open()) if "perf/step_s" in r]
    if steps:
        last = steps[-1]
        rows[run.name] = {"steps": len(steps), "peak_gpu_mem_gib": last.get("perf/peak_gpu_mem_gib"),  # none on CPU
                          "step_s": last["perf/step_s"], "weight_sync_s": last.get("rollout/weight_sync_s")}
(out / "scale_check.json").write_text(json.dumps(rows, indent=2))
print("| run | steps | peak GPU memory (GiB) | step (s) | weight sync (s) |\n|---|---|---|---|---|")
for name, r in rows.items():
    sync, peak = ("-" if r[k] is None else f"{r[k]:.2f}" for k in ("weight_sync_s", "peak_gpu_mem_gib"))
    print(f"| {name} | {r['steps']} | {peak} | {r['step_s']:.2f} | {sync} |")
PY
