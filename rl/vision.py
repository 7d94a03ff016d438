"""Images in episodes: camera frames as image tokens for vision-language models.

An env whose observations come with images defines `take_images()`: the frames made
since the last call, each returned once, as PIL images. The rollout engine attaches them
to the observation's chat message (`"images": [...]`). A `ChatFormat` built with an
`ImageTokenizer` renders them as image content blocks, expands each placeholder into the
model's image tokens, and keeps the processed pixels beside the episode's token ids; a
text-only `ChatFormat` drops them, so the same env trains a text model on its text.

Generation: an episode hands its context to the backend as an `ImagePrompt` (token ids
plus the processed images they contain). Training: with a `rollout_func`, TRL 1.16 runs
its forward passes without pixels (it only re-renders images from dataset columns, and
a rollout cannot return any), so `rl.trl_hooks.VisionGRPOMixin` adds each episode's images to the
batch TRL scores and trains on.
"""

from __future__ import annotations

from typing import Any

IMAGE_INPUT_KEYS = ("pixel_values", "image_position_ids")  # per image, as Gemma 4's image processor makes them
FRAME_KEY = "frame"  # the image itself, beside its inputs, when `ImageTokenizer.keep_frames` is on


class ImageTokenizer:
    """Chat text with image placeholders, plus images -> token ids and per-image model inputs.

    Lays images out as Gemma 4 does: the `image_token` placeholder a chat template writes
    becomes `boi_token`, one `image_token` per soft token of that image, and `eoi_token`.
    """

    def __init__(self, tokenizer: Any, image_processor: Any, image_token: str, boi_token: str, eoi_token: str,
                 pixel_dtype: Any = None):
        for name, token in (("image_token", image_token), ("boi_token", boi_token), ("eoi_token", eoi_token)):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
                raise ValueError(f"{name} {token!r} is not a token of the tokenizer")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token, self.boi_token, self.eoi_token = image_token, boi_token, eoi_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        # Pixels are kept per episode until the loss has seen them: in a bf16 model's dtype they
        # take half the memory of the processor's float32, and the vision tower casts to it anyway.
        self.pixel_dtype = pixel_dtype
        # Demonstrations store the frames themselves (a few KB as PNG) rather than processed pixels
        # (MBs per image at Gemma 4's sizes), and process them again in the SFT collator.
        self.keep_frames = False

    @classmethod
    def from_processor(cls, processor: Any, pixel_dtype: Any = None) -> ImageTokenizer:
        """From a transformers processor that names its image tokens (Gemma4Processor does)."""
        needed = ("tokenizer", "image_processor", "image_token", "boi_token", "eoi_token")
        missing = [name for name in needed if not getattr(processor, name, None)]
        if missing:
            raise ValueError(f"{type(processor).__name__} has no {', '.join(missing)}: toolgym lays images out "
                             "as Gemma 4 does (begin-of-image, one image token per soft token, end-of-image)")
        return cls(processor.tokenizer, processor.image_processor, processor.image_token, processor.boi_token,
                   processor.eoi_token, pixel_dtype)

    def encode(self, text: str, images: list) -> tuple[list[int], list[dict]]:
        """Token ids of `text` with each placeholder expanded, and each image's model inputs, in order."""
        parts = text.split(self.image_token)
        if len(parts) - 1 != len(images):
            raise ValueError(f"the rendered text has {len(parts) - 1} image placeholder(s) ({self.image_token!r}) "
                             f"but {len(images)} image(s) came with it")
        if not images:
            return self.tokenizer.encode(text, add_special_tokens=False), []
        processed = self.image_processor(images, return_tensors="pt")
        missing = [k for k in IMAGE_INPUT_KEYS if k not in processed]
        if missing:
            raise ValueError(f"{type(self.image_processor).__name__} gave no {missing} (got {sorted(processed)})")
        per_image = [{k: self._stored(processed[k][i]) for k in IMAGE_INPUT_KEYS} for i in range(len(images))]
        if self.keep_frames:
            for entry, image in zip(per_image, images):
                entry[FRAME_KEY] = image
        soft_tokens = [int(n) for n in processed["num_soft_tokens_per_image"]]
        expanded = parts[0] + "".join(f"{self.boi_token}{self.image_token * n}{self.eoi_token}{after}"
                                      for n, after in zip(soft_tokens, parts[1:]))
        return self.tokenizer.encode(expanded, add_special_tokens=False), per_image

    def inputs(self, rows: list[list], input_ids: Any) -> dict[str, Any]:
        """Model inputs for a batch whose row i's image tokens stand for the frames `rows[i]`, processed as
        `encode` did; refuses a row whose frames make another number of image tokens than it holds."""
        frames = [frame for row in rows for frame in row]
        if not frames:
            return {}
        processed = self.image_processor(frames, return_tensors="pt")
        soft = iter(int(n) for n in processed["num_soft_tokens_per_image"])
        for i, row in enumerate(rows):
            expected, found = sum(next(soft) for _ in row), int((input_ids[i] == self.image_token_id).sum())
            if expected != found:
                raise ValueError(f"row {i}: {len(row)} frame(s) make {expected} image tokens but its ids hold {found}; "
                                 "the frames do not belong to these ids (or truncation cut them)")
        images = [{k: self._stored(processed[k][j]) for k in IMAGE_INPUT_KEYS} for j in range(len(frames))]
        return batch_image_inputs([images], input_ids, self.image_token_id)

    def _stored(self, value: Any) -> Any:
        if self.pixel_dtype is not None and value.is_floating_point():
            return value.to(self.pixel_dtype)
        return value


class ImagePrompt(list):
    """Token ids plus the processed images whose tokens they contain, in order.

    A `list[int]` to everything else; a backend that takes images reads `.images`.
    """

    def __init__(self, ids: list[int], images: list[dict]):
        super().__init__(ids)
        self.images = images


def prompt_images(prompt: list[int]) -> list[dict]:
    return getattr(prompt, "images", None) or []


def batch_image_inputs(rows: list[list[dict]], input_ids: Any, image_token_id: int) -> dict[str, Any]:
    """Model inputs for a batch whose rows hold these images: each key stacked over the images in row order,
    and `mm_token_type_ids` marking the image tokens. Empty when no row has an image."""
    import torch

    images = [image for row in rows for image in row]
    if not images:
        return {}
    inputs = {k: torch.stack([image[k] for image in images]).to(input_ids.device) for k in IMAGE_INPUT_KEYS}
    inputs["mm_token_type_ids"] = (input_ids == image_token_id).long()
    return inputs


class VisionSFTCollator:
    """Pads demonstrations (`input_ids`, `labels`) with TRL's collator and adds their frames' model inputs.

    A row's `frames` are the images its image tokens stand for, in order; they are processed
    again here (deterministically, as in the rollout), so the dataset stays small.
    """

    def __init__(self, text_collator: Any, images: ImageTokenizer):
        self.text_collator = text_collator
        self.images = images

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        batch = self.text_collator([{k: example[k] for k in ("input_ids", "labels")} for example in examples])
        batch.update(self.images.inputs([example.get("frames") or [] for example in examples], batch["input_ids"]))
        return batch
