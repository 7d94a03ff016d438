"""Every private name of TRL that toolgym overrides, patches or reads, with what it relies on.

toolgym owns the rollout, the loss masks, model-token scoring and step-level advantages, and borrows
TRL's loss, optimizer and logging through these names. None is public API, so a TRL upgrade may move
or reshape any of them. `check()` runs before every GRPO run (`rl.trainer.build_trainer`): a missing
name or parameter stops the run at once, naming it, instead of failing mid-step or, worse, silently
skipping an override. `tests/unit/test_trl_contract.py` runs it against the installed TRL.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass


@dataclass(frozen=True)
class Hook:
    target: str  # "module:Qualified.name"
    params: tuple[str, ...]  # parameters the override or call relies on (a function), () for a plain name
    used_by: str
    why: str
    removed_by: str  # the upstream change that would make the hook unnecessary
    assigns: str = ""  # an attribute the target (a method) must assign, e.g. "self._metrics"


GRPO = "trl.trainer.grpo_trainer:GRPOTrainer"

HOOKS = (
    Hook(f"{GRPO}._generate_and_score_completions", ("inputs",),
         "rl/trl_hooks.py",
         "hands the batch's dataset rows (env seeds) to the rollout, adds step-level advantages, the "
         "model-token score mask and VLM image inputs to the batch TRL trains on",
         "a rollout_func that receives the dataset rows and may return extra per-token training columns"),
    Hook(f"{GRPO}._calculate_rewards", ("inputs", "prompts", "completions", "completion_ids_list"),
         "rl/trl_hooks.py",
         "keeps the per-function rewards of the gathered batch for step-level advantages",
         "per-function rewards in the output of _generate_and_score_completions"),
    Hook(f"{GRPO}._compute_loss", ("model", "inputs"), "rl/trl_hooks.py",
         "lets the loss pass read the batch's score mask",
         "a label/score mask column that TRL's loss pass forwards to the LM head"),
    Hook(f"{GRPO}._get_per_token_logps_and_entropies",
         ("model", "input_ids", "attention_mask", "logits_to_keep", "batch_size", "compute_entropy",
          "compute_aux_loss"),
         "rl/trl_hooks.py",
         "projects only the model's tokens through the LM head; gives a VLM its images in every pass",
         "the same score mask column, and image inputs carried for rollout_func batches"),
    Hook(f"{GRPO}._prepare_inputs", ("generation_batch",), "rl/trl_hooks.py",
         "re-splits a fresh generation batch's micro-batches (self._buffered_inputs) by completion length",
         "a way to choose how the generation batch is split into micro-batches", assigns="self._buffered_inputs"),
    Hook("trl.trainer.utils:split_tensor_dict", ("tensor_dict", "num_chunks"), "rl/trl_hooks.py (regroup_by_length)",
         "splits the regrouped generation batch as TRL splits it", ""),
    Hook(f"{GRPO}.__init__", (),
         "rl/trl_hooks.py (step_metrics; called by rl/trainer.py, rl/guards.py, rl/heldout.py)",
         "logs episode, rollout and held-out metrics into TRL's per-step metrics (self._metrics[mode][key])",
         "a public way to add metrics to a step's log", assigns="self._metrics"),
    Hook("trl.trainer.utils:_use_triton", ("device",), "rl/trl_hooks.py (compact_lm_head)",
         "on a CPU, TRL's fused LM head projects every position; patched so it projects only labelled ones",
         "compacting to labelled positions on every device, as on Triton devices"),
    Hook("trl.trainer.utils:add_fused_lm_head", (), "rl/logprobs.py (via GRPOTrainer)",
         "the fused head that takes `labels` and returns `log_probs`/`entropy` for the labelled positions", ""),
)


def _resolve(target: str):
    module_name, _, path = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in path.split(".") if path else ():
        obj = getattr(obj, part)
    return obj


def problems(hooks: tuple[Hook, ...] = HOOKS) -> list[str]:
    """What the installed TRL lacks of `hooks`: one line per missing name or parameter."""
    import trl

    out = []
    for hook in hooks:
        try:
            obj = _resolve(hook.target)
        except (ImportError, AttributeError) as e:
            out.append(f"{hook.target} is gone ({e}); used by {hook.used_by} ({hook.why})")
            continue
        if hook.assigns and f"{hook.assigns} = " not in inspect.getsource(obj):
            out.append(f"{hook.target} no longer sets {hook.assigns}; used by {hook.used_by} ({hook.why})")
        if hook.params:
            names = list(inspect.signature(obj).parameters)
            missing = [p for p in hook.params if p not in names]
            if missing:
                out.append(f"{hook.target} has no parameter {', '.join(missing)} (it takes {', '.join(names)}); "
                           f"used by {hook.used_by} ({hook.why})")
    return [f"TRL {trl.__version__}: {line}" for line in out]


def check() -> None:
    """Raise naming every hook the installed TRL breaks (a TRL version toolgym was not built on)."""
    found = problems()
    if found:
        raise RuntimeError("the installed TRL does not have what toolgym's TRL hooks rely on (rl/trl_contract.py); "
                           "install the TRL version pyproject.toml names:\n  " + "\n  ".join(found))
