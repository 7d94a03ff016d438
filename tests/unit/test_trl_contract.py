"""The TRL private names toolgym hooks (rl/trl_contract.py) exist in the installed TRL, and a missing or
reshaped one is named before a run starts."""

import pytest
from trl.trainer import grpo_trainer

from rl import trl_contract


def test_installed_trl_has_every_hooked_name():
    assert trl_contract.problems() == []
    trl_contract.check()


def test_every_override_of_the_trainer_is_in_the_contract():
    from rl.trl_hooks import ToolGymGRPOTrainer

    hooked = {h.target.rpartition(".")[2] for h in trl_contract.HOOKS if h.target.startswith(trl_contract.GRPO)}
    overridden = {name for klass in ToolGymGRPOTrainer.__mro__
                  if klass.__module__.startswith("rl.") for name in vars(klass)
                  if name.startswith("_") and not name.startswith("__") and hasattr(grpo_trainer.GRPOTrainer, name)}
    assert overridden and overridden <= hooked


def test_a_missing_hook_stops_the_run_naming_it(monkeypatch):
    monkeypatch.delattr(grpo_trainer.GRPOTrainer, "_compute_loss")
    [line] = trl_contract.problems()
    assert "GRPOTrainer._compute_loss is gone" in line and "rl/trl_hooks.py" in line
    with pytest.raises(RuntimeError, match="_compute_loss is gone"):
        trl_contract.check()


def test_a_reshaped_hook_names_the_missing_parameter(monkeypatch):
    def reshaped(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None):
        pass

    monkeypatch.setattr(grpo_trainer.GRPOTrainer, "_get_per_token_logps_and_entropies", reshaped)
    [line] = trl_contract.problems()
    assert "has no parameter compute_entropy, compute_aux_loss" in line


def test_a_metrics_dict_no_longer_set_is_named(monkeypatch):
    def init(self, *args, **kwargs):
        pass

    monkeypatch.setattr(grpo_trainer.GRPOTrainer, "__init__", init)
    [line] = trl_contract.problems()
    assert "no longer sets self._metrics" in line


def test_grpo_config_fields_read_from_source_match_the_installed_grpo_config():
    """`grpo.*` keys are checked against GRPOConfig's fields read from TRL's source files (no import of
    TRL): the names, and the plain types the check enforces, must be the installed class's."""
    import dataclasses

    from trl import GRPOConfig

    from rl.config_checks import grpo_config_fields

    plain = {"float": float, "int": int, "bool": bool, "str": str}

    def simple(t):
        return plain.get(t if isinstance(t, str) else getattr(t, "__name__", ""))

    installed = {f.name: simple(f.type) for f in dataclasses.fields(GRPOConfig) if f.init}
    read = {name: plain.get(annotation) for name, annotation in grpo_config_fields().items()}
    assert read == installed
    assert read["learning_rate"] is float and read["beta"] is float and "num_generations" in read
