"""Images through the rollout engine with Gemma 4's chat template and tool-call format (no model)."""

import pytest
from PIL import Image

from envs.base import ToolEnv, tool
from rl.chat import ChatFormat
from rl.config import ModelSection, RolloutSection
from rl.generation import Generation
from rl.models import TINY_VLM, load_image_tokenizer, load_tokenizer
from rl.rollout import run_episodes
from rl.toolcalls import get_format
from rl.vision import ImagePrompt, ImageTokenizer

SOFT_TOKENS = 64  # a 128x128 frame through the tiny image processor (4-pixel patches, 2x2 pooling)


class PaintEnv(ToolEnv):
    """A canvas the model paints; every observation comes with a picture of it."""

    def setup(self, options):
        self.canvas = "gray"
        self.frames = [Image.new("RGB", (128, 128), self.canvas)]
        return "Paint the canvas red."

    @tool
    def paint(self, color: str) -> str:
        """Paint the whole canvas.

        Args:
            color: A color name.
        """
        self.canvas = color
        self.frames.append(Image.new("RGB", (128, 128), color))
        self.terminated = color == "red"
        return f"The canvas is {color}."

    @property
    def solved(self):
        return self.terminated

    @tool
    def look(self) -> str:
        """Look at the canvas again."""
        self.frames.append(Image.new("RGB", (128, 128), self.canvas))
        return "You look at the canvas."

    def take_images(self):
        frames, self.frames = self.frames, []
        return frames


class Gemma4Script:
    """A 'model' replying from a script: a call ends with `<|tool_response>`, other text with `<turn|>`."""

    name = "scripted"
    takes_images = True

    def __init__(self, tokenizer, replies):
        self.tokenizer, self.replies, self.prompts = tokenizer, replies, []
        self.call_end = tokenizer.convert_tokens_to_ids("<|tool_response>")
        self.turn_end = tokenizer.convert_tokens_to_ids("<turn|>")

    def generate(self, prompts, params):
        out = []
        for prompt in prompts:
            self.prompts.append(prompt)
            reply = self.replies[len(self.prompts) - 1]
            stop = self.call_end if "<tool_call|>" in reply else self.turn_end
            ids = self.tokenizer.encode(reply, add_special_tokens=False) + [stop]
            out.append(Generation(ids, [-1.0] * len(ids), stop))
        return out


@pytest.fixture(scope="module")
def vlm_tokenizer():
    return load_tokenizer(ModelSection(name=TINY_VLM))


@pytest.fixture(scope="module")
def vlm_chat(vlm_tokenizer):
    images = load_image_tokenizer(ModelSection(name=TINY_VLM), vlm_tokenizer)
    return ChatFormat(vlm_tokenizer, get_format("gemma4"), {"enable_thinking": False}, images=images)


def test_gemma4_episode_with_images_is_the_templates_rendering_token_by_token(vlm_chat, vlm_tokenizer):
    replies = ["<|tool_call>call:look{}<tool_call|>", '<|tool_call>call:paint{color:<|"|>blue<|"|>}<tool_call|>',
               "Done.", '<|tool_call>call:paint{color:<|"|>red<|"|>}<tool_call|>']
    backend = Gemma4Script(vlm_tokenizer, replies)
    settings = RolloutSection(max_turns=4, max_completion_tokens=4096)
    [traj] = run_episodes([PaintEnv()], [0], backend, vlm_chat, settings)
    assert traj.info["tool_calls"] == 3 and traj.info["no_tool_calls"] == 1 and traj.info["format_errors"] == 0
    assert traj.info["stop_reason"] == "env_done" and traj.info["solved"]

    # The whole episode is exactly what Gemma 4's template renders for the conversation, with
    # each image placeholder expanded into begin-of-image, its soft tokens and end-of-image.
    def call(name, **arguments):
        return {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": name, "arguments": arguments}}]}

    def seen(role, text, **extra):
        return {"role": role, **extra, "content": [{"type": "image"}, {"type": "text", "text": text}]}

    conversation = [
        seen("user", "Paint the canvas red."),
        call("look"), seen("tool", "You look at the canvas.", name="look"),
        call("paint", color="blue"), seen("tool", "The canvas is blue.", name="paint"),
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "Error: no tool call found in your reply. Call one of the tools: paint, look."},
        call("paint", color="red"),
    ]
    full = vlm_tokenizer.apply_chat_template(conversation, tools=PaintEnv.tool_schemas(), tokenize=False,
                                             enable_thinking=False)
    expanded = full.replace("<|image|>", "<|image>" + "<|image|>" * SOFT_TOKENS + "<image|>")
    assert vlm_tokenizer.decode(traj.prompt_ids + traj.completion_ids) == expanded

    # Model tokens (mask 1) are exactly the replies with their stop tokens; the rest is the env's.
    model_ids = [i for i, m in zip(traj.completion_ids, traj.env_mask) if m]
    assert model_ids == [i for reply in replies for i in vlm_tokenizer.encode(reply, add_special_tokens=False)
                         + [backend.call_end if "<tool_call|>" in reply else backend.turn_end]]
    image_id = vlm_tokenizer.convert_tokens_to_ids("<|image|>")
    assert all(m == 0 for i, m in zip(traj.completion_ids, traj.env_mask) if i == image_id)

    # Three frames (first view, look, blue paint) in order; the final red frame came after the last turn.
    assert len(traj.images) == 3
    means = [round(float(img["pixel_values"][img["image_position_ids"][:, 0] >= 0].mean()), 3) for img in traj.images]
    gray, blue = 128 / 255, 255 / 255 / 3
    assert means == pytest.approx([gray, gray, blue], abs=0.01)

    # The backend saw the images of its context with every turn.
    assert [len(p.images) if isinstance(p, ImagePrompt) else 0 for p in backend.prompts] == [1, 2, 3, 3]


def test_a_text_model_gets_the_text_and_no_images(vlm_tokenizer):
    chat = ChatFormat(vlm_tokenizer, get_format("gemma4"), {"enable_thinking": False})
    backend = Gemma4Script(vlm_tokenizer, ["<|tool_call>call:look{}<tool_call|>", "ok"])
    [traj] = run_episodes([PaintEnv()], [0], backend, chat, RolloutSection(max_turns=2))
    text = vlm_tokenizer.decode(traj.prompt_ids + traj.completion_ids)
    assert "<|image|>" not in text and "You look at the canvas." in text and traj.images == []
    assert not any(isinstance(p, ImagePrompt) for p in backend.prompts)


def test_enable_thinking_reaches_the_gemma4_template(vlm_tokenizer):
    def prompt(**kwargs):
        chat = ChatFormat(vlm_tokenizer, get_format("gemma4"), kwargs)
        return vlm_tokenizer.decode(chat.prompt_ids([{"role": "user", "content": "hi"}], PaintEnv.tool_schemas()))

    assert "<|think|>" in prompt(enable_thinking=True)
    assert "<|think|>" not in prompt(enable_thinking=False)


def test_tool_results_continue_gemma4s_model_turn(vlm_chat, vlm_tokenizer):
    assert vlm_chat.results_need_calls  # Gemma 4 shows tool results only after structured tool_calls
    results = [{"role": "tool", "name": "look", "content": "A"}, {"role": "tool", "name": "paint", "content": "B"}]
    call_end = vlm_tokenizer.convert_tokens_to_ids("<|tool_response>")
    both = ('response:look{value:<|"|>A<|"|>}<tool_response|>'
            '<|tool_response>response:paint{value:<|"|>B<|"|>}<tool_response|>')
    assert vlm_chat.tool_turn_text(results, call_end) == both
    assert vlm_chat.tool_turn_text(results, None) == "<|tool_response>" + both  # cut off or stopped on <tool_call|>
    assert call_end in vlm_chat.stop_token_ids


def test_image_errors_name_the_bad_value(vlm_chat, vlm_tokenizer):
    with pytest.raises(ValueError, match=r"1 image placeholder\(s\) \('<\|image\|>'\) but 2 image\(s\)"):
        vlm_chat.images.encode("look: <|image|>", [Image.new("RGB", (8, 8))] * 2)
    with pytest.raises(ValueError, match=r"boi_token '<start_of_image>' is not a token of the tokenizer"):
        ImageTokenizer(vlm_tokenizer, None, "<|image|>", "<start_of_image>", "<image|>")
    text_backend = type("TextOnly", (), {"name": "text-only"})()
    with pytest.raises(ValueError, match=r"the 'text-only' generation backend cannot take images, but the model is "
                                         r"a vision-language one \(backends that can: hf\)"):
        run_episodes([PaintEnv()], [0], text_backend, vlm_chat, RolloutSection())


def test_template_that_never_shows_tool_results_is_refused(vlm_tokenizer):
    tokenizer = load_tokenizer(ModelSection(name=TINY_VLM, chat_template="trl:gemma4_v5"))
    tokenizer.chat_template = "{% for m in messages %}{% if m.role != 'tool' %}{{ m.content }}{% endif %}{% endfor %}"
    with pytest.raises(ValueError, match="never renders tool messages"):
        ChatFormat(tokenizer, get_format("gemma4"))


def test_pixels_are_kept_in_the_models_dtype(vlm_tokenizer):
    import torch

    image = Image.new("RGB", (64, 48), "red")
    text = "look: <|image|>"
    wide = load_image_tokenizer(ModelSection(name=TINY_VLM, dtype="float32"), vlm_tokenizer)
    narrow = load_image_tokenizer(ModelSection(name=TINY_VLM, dtype="bfloat16"), vlm_tokenizer)
    ids32, [img32] = wide.encode(text, [image])
    ids16, [img16] = narrow.encode(text, [image])
    assert ids16 == ids32
    assert img32["pixel_values"].dtype == torch.float32 and img16["pixel_values"].dtype == torch.bfloat16
    assert torch.equal(img16["pixel_values"], img32["pixel_values"].to(torch.bfloat16))
    pixels = img16["pixel_values"]
    assert pixels.numel() * pixels.element_size() * 2 == img32["pixel_values"].numel() * 4
    assert torch.equal(img16["image_position_ids"], img32["image_position_ids"])  # integers stay as they are
