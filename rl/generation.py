"""Generation backends: token ids in, token ids and logprobs out.

The rollout engine talks only to `GenerationBackend`. The transformers backend lives
here; vLLM backends implement the same three members (`generate`, `update_weights`,
`name`), so the engine never knows which one it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    stop_token_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)  # kept in the output, like vLLM's include_stop_str_in_output
    seed: int | None = None


@dataclass
class Generation:
    """One sampled continuation.

    `stopped_with` is the stop token it ended on; `stop_string` the stop string it ended
    with (its tokens are the last ones). Both None: cut off at `max_new_tokens`.
    """

    token_ids: list[int]
    logprobs: list[float]
    stopped_with: int | None = None
    stop_string: str | None = None

    @property
    def finished(self) -> bool:
        return self.stopped_with is not None or self.stop_string is not None


class GenerationBackend(Protocol):
    name: str

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]: ...

    def update_weights(self, model: "torch.nn.Module") -> None: ...


class TransformersBackend:
    """Batched `model.generate` with left padding; logprobs of the sampled tokens.

    Logprobs are those of the temperature-scaled distribution before top-k/top-p
    filtering, the quantity the GRPO loss compares against.
    """

    name = "hf"

    def __init__(self, model: "torch.nn.Module", tokenizer, batch_size: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.pad_token_id = tokenizer.pad_token_id
        self.batch_size = batch_size

    def update_weights(self, model: "torch.nn.Module") -> None:
        self.model = model  # same process, same tensors: nothing to copy

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        step = self.batch_size or len(prompts) or 1
        out: list[Generation] = []
        for i in range(0, len(prompts), step):
            out.extend(self._generate_batch(prompts[i:i + step], params))
        return out

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        import torch

        if not prompts:
            return []
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention_mask[row, width - len(ids):] = 1
        greedy = params.temperature <= 0
        if params.seed is not None:
            torch.manual_seed(params.seed)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                result = self.model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                    max_new_tokens=params.max_new_tokens, do_sample=not greedy,
                    temperature=None if greedy else params.temperature,
                    top_p=None if greedy else params.top_p, top_k=None if greedy else (params.top_k or 0),
                    eos_token_id=params.stop_token_ids or None, pad_token_id=self.pad_token_id,
                    stop_strings=params.stop_strings or None, tokenizer=self.tokenizer if params.stop_strings else None,
                    output_logits=True, return_dict_in_generate=True,
                )
        finally:
            self.model.train(was_training)
        new_tokens = result.sequences[:, width:].cpu()
        logits = torch.stack(result.logits, dim=1).float()  # (batch, new, vocab), unprocessed
        logits = logits / (params.temperature if not greedy else 1.0)
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new_tokens.to(logits.device).unsqueeze(-1))
        logprobs = logprobs.squeeze(-1).cpu()
        outputs = []
        for row in range(len(prompts)):
            ids, stopped_with, stop_string = self._cut(new_tokens[row].tolist(), params)
            outputs.append(Generation(ids, logprobs[row, :len(ids)].tolist(), stopped_with, stop_string))
        return outputs

    def _cut(self, ids: list[int], params: SamplingParams) -> tuple[list[int], int | None, str | None]:
        """Cut a padded row after its first stop token or stop string."""
        stops = set(params.stop_token_ids)
        for j, tok in enumerate(ids):
            if tok in stops:
                return ids[:j + 1], tok, None
            if params.stop_strings:
                text = self.tokenizer.decode(ids[:j + 1])
                hit = next((s for s in params.stop_strings if s in text), None)
                if hit:
                    return ids[:j + 1], None, hit
        return ids, None, None
