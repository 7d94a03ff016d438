"""The vision-language path on CPU: a tiny Gemma 4 VLM drives the local driving simulator, and GRPO trains on it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import pytest
import torch

import envs
from rl.chat import ChatFormat
from rl.cli import add_run_arguments, config_from_args
from rl.config import LoraSection, ModelSection, RolloutSection
from rl.generation import TransformersBackend
from rl.models import TINY_VLM, load_image_tokenizer, load_model, lora_config
from rl.rollout import run_episodes
from rl.toolcalls import get_format
from rl.vision import batch_image_inputs
from tests.integration.test_remote import serve

OBSERVE = "<|tool_call>call:observe{}<tool_call|>"  # opens every turn, so each tool result brings a frame


@pytest.fixture(scope="module")
def driving_servers():
    app = ("--app", "envs.driving.sim:app_factory")
    with serve(*app) as (_, a), serve(*app) as (_, b):
        yield [a, b]


@pytest.fixture(scope="module")
def vlm():
    cfg = ModelSection(name=TINY_VLM, tool_format="gemma4", dtype="float32")
    model, tokenizer = load_model(cfg)
    chat = ChatFormat(tokenizer, get_format("gemma4"), {"enable_thinking": False},
                      images=load_image_tokenizer(cfg, tokenizer))
    return model, tokenizer, chat


def test_lora_leaves_gemma4s_vision_tower_projector_and_audio_alone(vlm):
    from peft import get_peft_model

    model, _, _ = vlm
    linear = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert any(".vision_tower." in n for n in linear) and any("embed_vision" in n for n in linear)
    peft_model = get_peft_model(load_model(ModelSection(name=TINY_VLM, dtype="float32"))[0],
                                lora_config(LoraSection(), model))
    adapted = {name.removesuffix(".lora_A") for name, _ in peft_model.named_modules() if name.endswith("lora_A")}
    assert adapted and all(".language_model." in n for n in adapted)
    assert any(n.endswith("self_attn.q_proj") for n in adapted)
    # Without the exclusion all-linear would have adapted the vision tower and the projector.
    everything = get_peft_model(load_model(ModelSection(name=TINY_VLM, dtype="float32"))[0],
                                lora_config(LoraSection(exclude_modules=[]), model))
    names = {name for name, _ in everything.named_modules() if name.endswith("lora_A")}
    assert any("vision_tower" in n for n in names) and any("embed_vision" in n for n in names)


def test_sampled_logprobs_are_the_forward_pass_with_the_episodes_images(vlm, driving_servers):
    model, _, chat = vlm
    episodes = [envs.make("carla", urls=driving_servers) for _ in range(3)]
    settings = RolloutSection(max_turns=3, max_new_tokens=12, max_completion_tokens=1024, response_prefix=OBSERVE)
    trajectories = run_episodes(episodes, [0, 1, 2], TransformersBackend(model, chat.tokenizer), chat, settings)
    image_id = chat.images.image_token_id
    for t in trajectories:
        assert t.info["env_error"] == "" and t.info["tool_calls"] >= 2
        ids = torch.tensor([t.prompt_ids + t.completion_ids])
        assert len(t.images) == t.info["model_turns"] and int((ids == image_id).sum()) == 64 * len(t.images)
        assert image_id not in [i for i, m in zip(t.completion_ids, t.env_mask) if m]  # the model never writes one
        sampled = torch.tensor(t.logprobs)[torch.tensor(t.env_mask).bool()]
        with_images = model_logprobs(model, t, **batch_image_inputs([t.images], ids, image_id))
        assert torch.allclose(with_images, sampled, atol=1e-4)
        assert (model_logprobs(model, t) - sampled).abs().max() > 1e-2  # without pixels it reads another context


def model_logprobs(model, t, **images) -> torch.Tensor:
    """The model's logprobs of an episode's sampled tokens, from one forward pass."""
    ids = torch.tensor([t.prompt_ids + t.completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids, **images).logits[0, len(t.prompt_ids) - 1:-1].float()
    logprobs = torch.log_softmax(logits, -1).gather(-1, torch.tensor(t.completion_ids)[:, None])[:, 0]
    return logprobs[torch.tensor(t.env_mask).bool()]


def test_grpo_on_the_driving_simulator_sees_the_images_in_every_forward_pass(tmp_path, driving_servers):
    from rl.trainer import build_trainer

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    args = parser.parse_args([
        "--env", "carla", "--model", TINY_VLM, "--name", "vlm", "--env-urls", *driving_servers,
        "--set", f"output_dir={tmp_path}", "--set", "log.wandb=off", "--set", "grpo.max_steps=2",
        "--set", "grpo.gradient_accumulation_steps=1", "--set", "grpo.save_steps=100", "--set", "grpo.beta=0.01",
        "--set", "rollout.max_turns=3", "--set", "rollout.max_new_tokens=12",
        "--set", "rollout.max_completion_tokens=768",
        "--set", f"rollout.response_prefix={json.dumps(OBSERVE)}", "--set", "model.dtype=float32",
    ])
    cfg = config_from_args(args)
    assert cfg.model.tool_format == "gemma4" and cfg.rollout.chat_template_kwargs == {"enable_thinking": False}
    assert cfg.env.kwargs["urls"] == driving_servers and cfg.rollout.stop_after_tool_call
    trainer = build_trainer(cfg)
    image_id = trainer.image_token_id
    calls = []

    def check(module, args, kwargs):  # every forward over image tokens must come with their pixels
        input_ids = kwargs.get("input_ids")
        if input_ids is not None and (input_ids == image_id).any():
            images = 0
            if kwargs.get("pixel_values") is not None:
                images = kwargs["pixel_values"].shape[0]
            elif kwargs.get("mm_encoder_outputs"):  # generate() encodes the images once, before its first step
                images = len(kwargs["mm_encoder_outputs"]["image"].pooler_output)
            calls.append((torch.is_grad_enabled(), int((input_ids == image_id).sum()) // 64, images))

    trainer.model.get_base_model().register_forward_pre_hook(check, with_kwargs=True)
    trainer.train()

    assert calls and all(tokens == images for _, tokens, images in calls), calls
    assert any(grad for grad, _, _ in calls), "the loss forward must see the images too"
    assert sum(not grad for grad, _, _ in calls) > 4  # generation turns and reference logprobs (beta > 0)
    steps = [json.loads(line) for line in (tmp_path / "vlm" / "metrics.jsonl").open() if '"reward"' in line]
    assert [s["step"] for s in steps] == [1, 2]
    for s in steps:
        assert s["env/crashed"] == 0 and s["env/model_turns"] == 3 and s["env/tool_calls"] >= 3
        assert s["remote/episodes"] == 4 and s["remote/failed"] == 0 and s["remote/queued"] >= 2
    episode = json.loads((tmp_path / "vlm" / "episodes.jsonl").open().readline())
    assert "<|image>" in episode["text"] and "<|turn>model" in episode["text"] and "<|think|>" not in episode["text"]


def vlm_config(tmp_path, urls, *extra):
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return config_from_args(parser.parse_args([
        "--env", "carla", "--model", TINY_VLM, "--name", "vlm", "--env-urls", *urls,
        "--set", f"output_dir={tmp_path}", "--set", "log.wandb=off", "--set", "model.dtype=float32",
        "--set", "rollout.max_turns=3", "--set", "rollout.max_new_tokens=12",
        "--set", f"rollout.response_prefix={json.dumps(OBSERVE)}", *extra]))


def test_eval_of_a_vlm_gives_the_model_the_camera_frames(tmp_path, driving_servers, monkeypatch):
    from rl.evaluation import evaluate
    from rl.vision import ImagePrompt

    seen = []
    generate = TransformersBackend.generate

    def record(self, prompts, params):
        seen.extend(len(p.images) if isinstance(p, ImagePrompt) else 0 for p in prompts)
        return generate(self, prompts, params)

    monkeypatch.setattr(TransformersBackend, "generate", record)
    cfg = vlm_config(tmp_path, driving_servers, "--set", "eval.episodes=2", "--set", "eval.batch_size=2")
    result = evaluate(cfg)
    assert result["episodes"] == 2 and result["label"] == TINY_VLM and result["env_errors"] == 0
    assert len(seen) == 6  # 2 episodes x 3 turns
    assert max(seen) >= 2, f"the model never saw the frames its observe() calls returned: {seen}"


class ScriptedDriver:
    """Stands in for the driving expert: look, then change lane, then look again."""

    PLAN = (("observe", {}), ("lane_change", {"direction": "left"}), ("observe", {}))

    def __init__(self, seed: int = 0, explore: float = 0.0):
        self.turns: dict[int, int] = {}  # one policy plays a whole batch: count each episode's turns

    def __call__(self, env):
        from envs.base import ToolCall

        turn = self.turns[id(env)] = self.turns.get(id(env), -1) + 1
        return ToolCall(*self.PLAN[min(turn, len(self.PLAN) - 1)])


@pytest.fixture
def scripted_expert(monkeypatch):
    from envs.driving.carla import CarlaEnv

    monkeypatch.setattr("envs.experts.EXPERTS", {CarlaEnv: ScriptedDriver})


def test_vlm_demonstrations_keep_the_frames_their_image_tokens_stand_for(tmp_path, driving_servers, scripted_expert,
                                                                          vlm):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from rl.demos import demonstrations
    from rl.evaluation import make_policy, play
    from rl.vision import VisionSFTCollator

    model, tokenizer, chat = vlm
    cfg = vlm_config(tmp_path, driving_servers)
    rows = demonstrations(cfg, tokenizer, num_episodes=2)
    boi = tokenizer.convert_tokens_to_ids("<|image>")
    for ids, frames in zip(rows["input_ids"], rows["frames"]):
        assert len(frames) == ids.count(boi) >= 3  # the reset frame and one per tool call
    # the same episodes played again: the frames stored (PNG) give exactly the rollout's pixels
    settings = dataclasses.replace(cfg.rollout, response_prefix="")  # as demonstrations play
    played = play(cfg, chat, [0, 1], policy=make_policy(cfg, "expert"), settings=settings, batch_size=2)
    collate = VisionSFTCollator(DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id), chat.images)
    examples = [{"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)], "frames": frames}
                for ids, mask, frames in zip(rows["input_ids"], rows["completion_mask"], rows["frames"])]
    batch = collate(examples)
    assert torch.equal(batch["pixel_values"], torch.stack([i["pixel_values"] for t in played for i in t.images]))
    assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == chat.images.image_token_id).long())
    with torch.no_grad():  # the loss reads the pixels
        loss = model(**batch).loss
        blank = model(**{**batch, "pixel_values": torch.zeros_like(batch["pixel_values"])}).loss
    assert torch.isfinite(loss) and not torch.isclose(loss, blank)
    with pytest.raises(ValueError, match=r"row 1: 2 frame\(s\) make 128 image tokens but its ids hold 192"):
        collate([examples[0], {**examples[1], "frames": examples[1]["frames"][:2]}])


def test_sft_of_a_vlm_trains_its_adapter_on_the_frames_and_eval_loads_it(tmp_path, driving_servers, scripted_expert,
                                                                        monkeypatch):
    import rl.sft
    from rl.evaluation import evaluate
    from rl.models import load_image_tokenizer, load_model
    from rl.sft import train_sft

    cfg = vlm_config(tmp_path, driving_servers, "--name", "vsft", "--set", "sft.num_episodes=4",
                     "--set", "sft.max_steps=2", "--set", "sft.per_device_train_batch_size=2",
                     "--set", "sft.gradient_accumulation_steps=1", "--set", "sft.logging_steps=1")
    seen = []

    def check(module, args, kwargs):  # every training forward over image tokens comes with their pixels
        ids = kwargs.get("input_ids")
        if torch.is_grad_enabled() and ids is not None:
            pixels = kwargs.get("pixel_values")
            seen.append((int((ids == module.config.image_token_id).sum()) // 64, 0 if pixels is None else len(pixels)))

    class Hooked(rl.sft.SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.model.get_base_model().register_forward_pre_hook(check, with_kwargs=True)

    monkeypatch.setattr(rl.sft, "SFTTrainer", Hooked)
    out = train_sft(cfg)
    assert len(seen) == 2 and all(tokens == images >= 6 for tokens, images in seen), seen
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").open() if '"loss"' in line]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert (out / "final" / "adapter_config.json").exists() and not (out / "final" / "model.safetensors").exists()
    trained = ModelSection(name=str(out), tool_format="gemma4", dtype="float32")
    model, tokenizer = load_model(trained)
    assert type(model).__name__ == "Gemma4ForConditionalGeneration"
    assert load_image_tokenizer(trained, tokenizer) is not None
    result = evaluate(vlm_config(tmp_path, driving_servers, "--model", str(out), "--set", "eval.episodes=2",
                                 "--set", "eval.batch_size=2"))
    assert result["episodes"] == 2 and result["env_errors"] == 0


def test_full_fine_tuning_of_a_vlm_is_refused_with_the_setting_to_change(tmp_path, driving_servers):
    from rl.config import ConfigError
    from rl.sft import train_sft

    with pytest.raises(ConfigError, match="needs lora.enabled=true"):
        train_sft(vlm_config(tmp_path, driving_servers, "--set", "lora.enabled=false"))


@pytest.mark.parametrize("backend", ["vllm", "vllm-server"])
def test_grpo_refuses_a_vllm_backend_for_a_vlm_before_starting_an_engine(tmp_path, driving_servers, backend):
    from rl.config import ConfigError
    from rl.trainer import build_trainer

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    cfg = config_from_args(parser.parse_args([
        "--env", "carla", "--model", TINY_VLM, "--name", "vlm", "--env-urls", *driving_servers,
        "--set", f"output_dir={tmp_path}", "--set", "log.wandb=off", "--set", f"rollout.backend={backend}",
        "--set", "rollout.vllm.urls=[http://127.0.0.1:9]"]))  # never dialled: refused first
    with pytest.raises(ConfigError,
                       match=rf"'tiny-vlm' is a vision-language model; rollout.backend='{backend}'"
                             r".*accepted for VLMs: hf"):
        build_trainer(cfg)
    assert not list(tmp_path.rglob("*.safetensors"))  # no engine weights were written
