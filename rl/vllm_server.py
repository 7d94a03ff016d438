"""A vLLM generation server for rollouts (`launch/serve_vllm.py`): one in-process engine behind HTTP.
Its client is `rl.vllm_server_backend.VLLMServerBackend`.

    GET  /health          {"model", "weights_version", "running", "fused_groups"}
    POST /generate        {"request_id", "prompt_token_ids", "sampling": {...}}
                       -> {"request_id", "prompt_len", "token_ids", "logprobs", "stopped_with",
                           "stop_string", "weights_version"}
    POST /update_weights  {"path", "version"} -> {"weights_version", "tensors", "seconds"}

Every request is one episode's turn; the engine batches them continuously, so an episode
back from its env joins the running batch at once. The reply echoes the request id and
the prompt length, and the client refuses a reply that does not match what it sent: an
episode is matched to its own completion by id, never by position.

Weight sync: the trainer writes the tensors that changed (all of them the first time)
to a safetensors file that the server can read (same machine or shared storage) and posts
its path; the server loads it between requests, never in the middle of a sequence. (On
GPUs, NCCL broadcast would skip the disk; it is not implemented here.)
"""

from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from rl.generation import SamplingParams


class Sampling(BaseModel):
    temperature: float = 1.0
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_new_tokens: int = Field(64, ge=0)
    stop_token_ids: list[int] = []
    stop_strings: list[str] = []
    seed: int | None = None


class GenerateRequest(BaseModel):
    request_id: str = Field(min_length=1)
    prompt_token_ids: list[int] = Field(min_length=1)
    sampling: Sampling = Sampling()


class WeightsRequest(BaseModel):
    path: str
    version: int | None = None


def server_app(backend):
    """The FastAPI app serving `backend` (a `VLLMBackend`)."""
    state: dict[str, Any] = {"running": 0}

    @asynccontextmanager
    async def lifespan(app):
        state["stream"] = backend.stream()
        yield
        await state["stream"].aclose()

    app = FastAPI(title="toolgym vLLM server", lifespan=lifespan)

    @app.get("/health")
    async def health():
        return {"model": backend.model_name, "weights_version": backend.weights_version,
                "running": state["running"], "fused_groups": backend.fused_groups()}

    @app.post("/generate")
    async def generate(request: GenerateRequest):
        vocab = backend.vocab_size
        bad = [t for t in request.prompt_token_ids if not 0 <= t < vocab]
        if bad:
            raise HTTPException(422, f"prompt_token_ids: token id {bad[0]} is outside the vocabulary [0, {vocab})")
        if len(request.prompt_token_ids) >= backend.max_model_len:
            raise HTTPException(422, f"prompt of {len(request.prompt_token_ids)} tokens does not fit "
                                     f"max_model_len={backend.max_model_len}")
        state["running"] += 1
        try:
            sampling = SamplingParams(**request.sampling.model_dump())
            gen = await state["stream"].generate(0, request.prompt_token_ids, sampling)
        finally:
            state["running"] -= 1
        return {"request_id": request.request_id, "prompt_len": len(request.prompt_token_ids),
                "weights_version": backend.weights_version, **asdict(gen)}

    @app.post("/update_weights")
    async def update_weights(request: WeightsRequest):
        path = Path(request.path)
        if not path.is_file():
            raise HTTPException(422, f"path: no weights file at {str(path)!r} (the server must see the trainer's file)")

        def load() -> int:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                tensors = ((name, f.get_tensor(name)) for name in f.keys())  # noqa: SIM118
                return backend.load_weights(tensors, request.version)

        sent = await state["stream"].exclusive(load)
        return {"weights_version": backend.weights_version, "tensors": sent, "seconds": backend.last_sync["seconds"]}

    return app


def serve(model: str, host: str = "127.0.0.1", port: int = 8001, **engine_kwargs: Any) -> None:
    """Start an engine on `model` (a checkpoint directory) and serve it until interrupted."""
    import uvicorn

    from rl.vllm_backend import VLLMBackend

    backend = VLLMBackend(model, **engine_kwargs)
    uvicorn.run(server_app(backend), host=host, port=port, log_level="warning", timeout_keep_alive=60)
