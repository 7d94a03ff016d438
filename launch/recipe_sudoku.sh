#!/usr/bin/env bash
# Base model -> agent on 4x4 hard Sudoku, end to end, with configs/sudoku-sft.yaml:
# expert demonstrations -> SFT -> GRPO from the SFT checkpoint -> eval of every stage on
# the same held-out seeds, beside the random-legal and expert reference rows. The table
# goes to OUT/results.md; the runs to OUT/sft and OUT/grpo (GRPO's curve: OUT/grpo/curve.png).
#
#   launch/recipe_sudoku.sh OUT [DEMOS] [SFT_EPOCHS] [GRPO_STEPS] [EVAL_EPISODES] [--set KEY=VALUE ...]
#
# Defaults: 512 demonstrations, 2 SFT epochs, 2 GRPO steps of 256 episodes (the config's), 100
# eval episodes. Stage times measured on one H100: SFT ~1.5 min (and a one-off Gemma conversion,
# ~1 min); a GRPO step 47 s with the transformers backend, 28 s with --set rollout.backend=vllm
# (rl/bench/baselines/grpo_step-h100.json, 8 sequences per micro-batch). Raise GRPO_STEPS when there
# is time: GRPO is what has to move the solve rate (35 steps: rl/bench/baselines/sudoku-grpo-long-h200).
# Evals that do not wait on a later stage run beside it (base beside SFT, SFT beside
# GRPO). Any --set after the numbers reaches every stage. A CPU smoke run of the whole chain:
#
#   launch/recipe_sudoku.sh /tmp/recipe 4 1 1 2 --set rollout.max_turns=3 \
#       --set grpo.per_device_train_batch_size=4 --set grpo.gradient_accumulation_steps=1 \
#       --set grpo.num_generations=4
#
# MODEL (default gemma-3-270m), CONFIG (default configs/sudoku-sft.yaml) and PYTHON
# (default python) pick the model, the config and the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: $0 OUT [DEMOS] [SFT_EPOCHS] [GRPO_STEPS] [EVAL_EPISODES] [--set KEY=VALUE ...]"
out=${1:?$usage}
shift
numbers=()
while [[ $# -gt 0 && $1 != --* && ${#numbers[@]} -lt 4 ]]; do numbers+=("$1"); shift; done
demos=${numbers[0]:-512}
epochs=${numbers[1]:-2}
grpo_steps=${numbers[2]:-2}
episodes=${numbers[3]:-100}
model=${MODEL:-gemma-3-270m}
config=${CONFIG:-configs/sudoku-sft.yaml}
python=${PYTHON:-python}
common=(--config "$config" --env sudoku --set "output_dir=$out" --set log.wandb=off "$@")
mkdir -p "$out/eval" "$out/logs"

evaluate() {  # evaluate LABEL ARGS...: in the background, log in OUT/logs/eval-LABEL.log
    local label=$1
    shift
    echo "== eval $label (log: $out/logs/eval-$label.log)" >&2
    "$python" launch/eval.py "${common[@]}" --episodes "$episodes" --out "$out/eval" --label "$label" "$@" \
        >"$out/logs/eval-$label.log" 2>&1 &
    evals+=($!)
}
evals=()

evaluate random --policy random
evaluate expert --policy expert
evaluate base --model "$model"
echo "== demonstrations + SFT" >&2
"$python" launch/sft.py "${common[@]}" --model "$model" --name sft --num-episodes "$demos" \
    --set "sft.num_train_epochs=$epochs"
sft_done=$SECONDS
evaluate SFT --model "$out/sft"
echo "== GRPO from the SFT checkpoint" >&2
"$python" launch/grpo.py "${common[@]}" --model "$out/sft" --name grpo --set "grpo.max_steps=$grpo_steps"
grpo_done=$SECONDS
evaluate SFT+GRPO --model "$out/grpo"
for pid in "${evals[@]}"; do
    wait "$pid" || { echo "an eval failed; see $out/logs/" >&2; exit 1; }
done

"$python" - "$out" "$config" "$model" "$demos" "$epochs" "$grpo_steps" "$episodes" "${*:-none}" \
    "SFT stage $sft_done s, GRPO stage $((grpo_done - sft_done)) s, total $SECONDS s" <<'PY' >"$out/results.md"
import json, sys
from pathlib import Path
from rl.evaluation import MARKDOWN_HEADER, markdown_row, paired_comparison, paired_line
out, config, model, demos, epochs, steps, episodes, overrides, timing = sys.argv[1:]
try:
    import torch
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
except ImportError:
    device = "CPU"
print("# Sudoku recipe: base -> SFT -> SFT+GRPO\n")
print(f"Config `{config}` (overrides: {overrides}), model `{model}`, on {device}. SFT on {demos} expert "
      f"demonstrations, {epochs} epochs; GRPO from the SFT checkpoint, {steps} steps. Eval: {episodes} held-out "
      "seeds (from 10,000,000), greedy; random = uniformly random legal moves.\n")
print(MARKDOWN_HEADER)
for label in ("random", "base", "SFT", "SFT+GRPO", "expert"):
    print(markdown_row(json.loads((Path(out) / "eval" / f"sudoku-{label}.json").read_text())))
rows = {label: json.loads((Path(out) / "eval" / f"sudoku-{label}.json").read_text()) for label in ("SFT", "SFT+GRPO")}
print(f"\nPaired: {paired_line(paired_comparison(rows['SFT'], rows['SFT+GRPO']))}.")
print(f"\nWall time: {timing}. GRPO curve: {out}/grpo/curve.png")
PY
cat "$out/results.md"
