"""Shared fixtures: a locally built tokenizer and a scripted policy standing in for a model."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from rl.chat import ChatFormat, load_template
from rl.generation import Generation, SamplingParams
from rl.toolcalls import get_format


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from rl.models import tiny_tokenizer as build

    tok = build()
    tok.chat_template = load_template("gemma3_tools")
    return tok


@pytest.fixture
def chat(tiny_tokenizer):
    return ChatFormat(tiny_tokenizer, get_format("hermes"), {"enable_thinking": False})


class ScriptedBackend:
    """A 'model' that replies with scripted text: `policy(context_text, turn) -> text`.

    Each reply is the text's tokens plus the end-of-turn token, with logprob -1 each, so
    tests can tell model tokens from env tokens exactly.
    """

    name = "scripted"

    def __init__(self, tokenizer, policy: Callable[[str, int], str], stop: bool = True):
        self.tokenizer = tokenizer
        self.policy = policy
        self.stop = stop
        self.calls: list[list[list[int]]] = []
        self.end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        self.calls.append(prompts)
        out = []
        for ids in prompts:
            context = self.tokenizer.decode(ids)
            turn = context.count("<start_of_turn>model") - 1
            text = self.policy(context, turn)
            hit = next((s for s in params.stop_strings if s in text), None)
            if hit:  # like a real backend: cut right after the stop string, keep it
                text = text[:text.index(hit) + len(hit)]
            tokens = self.tokenizer.encode(text, add_special_tokens=False)
            stopped = None
            if self.stop and not hit and len(tokens) < params.max_new_tokens:
                tokens, stopped = tokens + [self.end_of_turn], self.end_of_turn
            tokens = tokens[: params.max_new_tokens]
            out.append(Generation(tokens, [-1.0] * len(tokens), stopped, hit if len(tokens) else None))
        return out

    def update_weights(self, model) -> None:
        pass


@pytest.fixture
def scripted(tiny_tokenizer):
    return lambda policy, **kw: ScriptedBackend(tiny_tokenizer, policy, **kw)


@pytest.fixture
def lm_head_rows(monkeypatch) -> list[int]:
    """Rows each call of TRL's fused LM head projects (its chunked log-prob kernel), in call order."""
    import trl.trainer.utils as trl_utils

    projected: list[int] = []
    kernel = trl_utils._ChunkedLogProbFunction

    class Counting:
        @staticmethod
        def apply(hidden, *args):
            projected.append(hidden.shape[0])
            return kernel.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Counting)
    return projected


def _end_process_group() -> str | None:
    """Ends a torch.distributed group left set up (vLLM's records of its groups too, or the next engine in this
    process would take them as set up); what was left, if anything."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return None
    vllm_state = sys.modules.get("vllm.distributed.parallel_state")
    if vllm_state is not None:
        vllm_state.destroy_model_parallel()
        vllm_state.destroy_distributed_environment()
    if distributed.is_initialized():
        distributed.destroy_process_group()
    return "a torch.distributed process group set up"


def _restore_torch_settings() -> str | None:
    """Puts back torch's process-wide settings a file may change; which were changed, if any."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    settings = {  # name: (value now, default, how to put it back)
        "default dtype": (torch.get_default_dtype(), torch.float32, torch.set_default_dtype),
        "float32 matmul precision": (torch.get_float32_matmul_precision(), "highest",
                                     torch.set_float32_matmul_precision),
        "grad mode": (torch.is_grad_enabled(), True, torch.set_grad_enabled),
        **{f"autocast on {device}": (torch.is_autocast_enabled(device), False,
                                     lambda on, device=device: torch.set_autocast_enabled(device, on))
           for device in ("cpu", "cuda")}}
    left = [f"{name} {now}" for name, (now, default, _) in settings.items() if now != default]
    for now, default, put in settings.values():
        if now != default:
            put(default)
    return f"torch's {', '.join(left)}" if left else None


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind(request):
    """Fails the file that leaves a torch.distributed group set up (a vLLM engine's shutdown ends the one it made)
    or one of torch's process-wide settings changed, and puts things back: with the files shared out among workers
    (`pytest -n 2`), the next file on that worker would run under them."""
    yield
    left = [what for what in (_end_process_group(), _restore_torch_settings()) if what]
    if left:
        pytest.fail(f"{request.module.__name__} left {'; '.join(left)}")


TIERS = ("unit", "integration", "slow")  # fastest first: a break in a pure-Python unit shows in minutes


def pytest_collection_modifyitems(config, items):
    """Mark each test by its folder (`-m unit`, `-m "not slow"`) and run the tiers fastest first."""
    def tier(item) -> int:
        parts = item.path.parts
        return next((i for i, name in enumerate(TIERS) if name in parts), len(TIERS))

    for item in items:
        rank = tier(item)
        if rank < len(TIERS):
            item.add_marker(TIERS[rank])
    items.sort(key=tier)  # stable: each tier keeps its files' order
