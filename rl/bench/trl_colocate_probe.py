"""TRL's own GRPO loop in colocate mode (`use_vllm=True, vllm_mode="colocate"`) on a tiny Gemma 3, weight sync included.

The smallest run of TRL's colocated vLLM path: a few GRPO steps, each logged as it ends with the count of non-finite
trainer weights, then "TRL colocate: OK". On vLLM 0.26 with a vocabulary under 1,024 tokens it shows the V2 model
runner's out-of-vocabulary sample (rl/bench/baselines/README.md, "TRL's colocate mode and vLLM 0.26's V2 model
runner"); `VLLM_USE_V2_MODEL_RUNNER=0` or `--vocab 1024` avoid it. Needs a CUDA GPU, trl and datasets.

    python -m rl.bench.trl_colocate_probe --out /tmp/trl-probe [--vocab N] [--steps 3] [--lr 1e-5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the model, TRL's output and log_history.json")
    parser.add_argument("--vocab", type=int, help="the tiny model's vocabulary size (default: its tokenizer's, 384)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    args = parser.parse_args(argv)

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rl.bench.vllm_sync_probe import tiny_checkpoint
    from rl.models import tiny_tokenizer

    out = Path(args.out)
    tiny_checkpoint(out / "model", vocab=args.vocab)
    tok = tiny_tokenizer()  # the tokenizer saved beside the model

    class Show(TrainerCallback):  # every log line and every non-finite weight, as they happen
        def on_log(self, args, state, control, logs=None, **kwargs):
            shown = {k: logs[k] for k in ("loss", "grad_norm", "reward") if k in logs}
            print("LOG", state.global_step, shown, flush=True)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            bad = [n for n, p in model.named_parameters() if not bool(p.detach().isfinite().all())]
            print("STEP_END", state.global_step, "non-finite weights:", len(bad), bad[:3], flush=True)

    config = GRPOConfig(output_dir=str(out / "trl"), per_device_train_batch_size=16, num_generations=8,
                        max_completion_length=32, max_steps=args.steps, learning_rate=args.lr, logging_steps=1,
                        report_to=[], save_strategy="no", use_vllm=True, vllm_mode="colocate",
                        vllm_gpu_memory_utilization=args.gpu_memory_utilization, vllm_enable_sleep_mode=False)
    dataset = Dataset.from_dict({"prompt": ["Sudoku board: 1 2 . . ; place a digit"] * 64})
    trainer = GRPOTrainer(model=str(out / "model"), processing_class=tok, args=config, train_dataset=dataset,
                          reward_funcs=lambda completions, **kw: [len(c) / 100 for c in completions],
                          callbacks=[Show()])
    trainer.train()
    (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    print("TRL colocate: OK")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
