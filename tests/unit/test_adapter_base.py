"""A LoRA adapter's base model, read from its adapter_config.json: loading takes this machine's Gemma 3 270M
for one trained elsewhere; an export's lineage keeps the name the adapter records."""

import json

from rl.config import load_config, to_yaml
from rl.export.hf import lineage
from rl.models import GEMMA_270M, _adapter_base, recorded_base


def adapter(folder, base: str):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    return folder


def test_an_adapter_trained_on_another_machine_loads_this_machines_gemma_and_keeps_its_lineage(tmp_path):
    elsewhere = "/home/someone/.cache/toolgym/" + GEMMA_270M
    final = adapter(tmp_path / "run" / "final", elsewhere)
    (tmp_path / "run" / "config.yaml").write_text(to_yaml(load_config(None, ["model.name=tiny"])))
    assert recorded_base(final) == elsewhere and _adapter_base(str(final)) == GEMMA_270M
    assert lineage(str(final)) == [str(final), elsewhere]  # the adapter's own record, not the run's model.name


def test_a_base_that_exists_here_is_loaded_as_named_and_a_run_without_adapter_names_its_model(tmp_path):
    local = tmp_path / "cache" / GEMMA_270M
    local.mkdir(parents=True)
    sft = adapter(tmp_path / "sft", str(local))
    assert _adapter_base(str(sft)) == str(local)
    assert recorded_base(tmp_path) is None and _adapter_base(str(local)) is None  # not adapters
    grpo = adapter(tmp_path / "grpo" / "final", str(sft))  # GRPO on top of an SFT adapter
    assert lineage(str(grpo)) == [str(grpo), str(sft), str(local)]
    full = tmp_path / "full" / "final"  # LoRA off: final/ is a whole model, the run's config names its base
    full.mkdir(parents=True)
    (full.parent / "config.yaml").write_text(to_yaml(load_config(None, [f"model.name={sft}"])))
    assert lineage(str(full)) == [str(full), str(sft), str(local)]
