"""SparseCutProcessor: prompts and images -> `input_ids`, `attention_mask`, `pixel_values`.

Each `<image>` placeholder becomes M_v copies of the image token, one per visual
position (SPEC, "LLM"); each image becomes its views (images.py) normalised by a
transformers image processor. Save/load goes through transformers' `ProcessorMixin`:
the tokenizer files, plus `processor_config.json` holding the image processor's
config and this processor's own fields.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, BatchFeature, ProcessorMixin
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from .images import load_image, make_views

ImageLike = str | os.PathLike | Image.Image  # a path or an image, as load_image takes


def add_image_token(tokenizer: PreTrainedTokenizerBase, image_token: str = "<image>") -> int:
    """Register `image_token` as an extra special token (so text never splits it) and return its id.

    Adds a row to the vocabulary when the token is new: the caller resizes the LLM's embeddings.
    """
    if not isinstance(image_token, str) or not image_token:
        raise ValueError(f"image_token: expected a non-empty string, got {image_token!r}")
    if image_token not in tokenizer.all_special_tokens:
        tokenizer.add_special_tokens({"extra_special_tokens": [image_token]}, replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(image_token)


def _base_size(image_processor: Any) -> int:
    """Side of one view, from the image processor's crop size (if it crops) or its size."""
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop is not None:
        field, height, width = "crop_size", crop["height"], crop["width"]
    else:
        size = getattr(image_processor, "size", None)
        if size is None:
            raise ValueError("image_processor.size: missing; cannot tell the view size")
        field = "size"
        height = size["height"] or size["shortest_edge"]
        width = size["width"] or size["shortest_edge"]
    if not height or height != width:
        raise ValueError(f"image_processor.{field}: views must be square, got height={height} width={width}")
    return int(height)


class SparseCutProcessor(ProcessorMixin):
    """Tokenizer + image processor for SparseCut models (LLaVA-style `<image>` prompts)."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        num_image_tokens: int = 576,
        hi_res: bool = False,
        crop_grid: Sequence[int] = (2, 2),
        image_token: str = "<image>",
        template: str = "vicuna_v1",
        chat_template: str | None = None,
    ):
        # Only the __init__ arguments are written to processor_config.json (ProcessorMixin.to_dict),
        # so every field here is one of them; JSON turns crop_grid into a list, hence tuple().
        if not isinstance(num_image_tokens, int) or isinstance(num_image_tokens, bool) or num_image_tokens <= 0:
            raise ValueError(f"num_image_tokens: expected a positive int, got {num_image_tokens!r}")
        if not isinstance(hi_res, bool):
            raise ValueError(f"hi_res: expected a bool, got {hi_res!r}")
        grid = tuple(crop_grid)
        if len(grid) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in grid):
            raise ValueError(f"crop_grid: expected (rows, cols) of positive ints, got {crop_grid!r}")
        if not isinstance(image_token, str) or not image_token:
            raise ValueError(f"image_token: expected a non-empty string, got {image_token!r}")
        self.num_image_tokens = num_image_tokens
        self.hi_res = hi_res
        self.crop_grid = grid
        self.image_token = image_token
        self.template = template  # the conversation template the model was trained with (templates.py)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.base_size = _base_size(image_processor)  # not an __init__ argument: derived, not saved
        self._check_image_token()

    @classmethod
    def from_parts(
        cls,
        image_processor: Any,
        tokenizer: PreTrainedTokenizerBase,
        *,
        num_image_tokens: int,
        hi_res: bool = False,
        crop_grid: Sequence[int] = (2, 2),
        image_token: str = "<image>",
        template: str = "vicuna_v1",
    ) -> SparseCutProcessor:
        """Build a processor from an image processor and a tokenizer that already holds `image_token`."""
        return cls(
            image_processor,
            tokenizer,
            num_image_tokens=num_image_tokens,
            hi_res=hi_res,
            crop_grid=crop_grid,
            image_token=image_token,
            template=template,
        )

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *, image_backend: str = "pil", **kwargs: Any
    ) -> SparseCutProcessor:
        """Load a processor saved with `save_pretrained`.

        Written by hand rather than inherited because AutoImageProcessor picks the
        torchvision backend whenever torchvision is installed (and PilBackend saves its
        class name without the `Pil` suffix), which would change pixel values after a
        round trip; `image_backend` pins the backend ("pil" by default, as we build views
        with PIL).
        """
        image_processor = AutoImageProcessor.from_pretrained(
            pretrained_model_name_or_path, backend=image_backend, **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
        processor_dict, _ = cls.get_processor_dict(pretrained_model_name_or_path, **kwargs)
        return cls.from_args_and_dict([image_processor, tokenizer], processor_dict)

    @property
    def full_view_size(self) -> int:
        """The side of the largest view of an image: the high-resolution one (all crops) with hi_res, else the base."""
        return self.base_size * max(self.crop_grid) if self.hi_res else self.base_size

    @property
    def image_token_id(self) -> int:
        """Id of the image token; `input_ids` hold it at every visual position."""
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    @property
    def pad_fill(self) -> tuple[int, int, int]:
        """RGB colour of the square padding: the image processor's mean, as LLaVA-1.5."""
        return tuple(int(m * 255) for m in self.image_processor.image_mean)

    def _check_image_token(self) -> None:
        """The image token must be one vocabulary entry that text never splits."""
        ids = self.tokenizer.encode(self.image_token, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == self.tokenizer.unk_token_id:
            raise ValueError(
                f"image_token: {self.image_token!r} is not a single token of the tokenizer "
                f"(encodes to {ids}); call add_image_token(tokenizer) first"
            )

    def __call__(
        self,
        text: str | list[str],
        images: ImageLike | Sequence[ImageLike] | None = None,
        padding: bool | str = True,
        padding_side: str | None = None,
        return_tensors: str | None = "pt",
        truncation: bool | str | None = None,
        max_length: int | None = None,
    ) -> BatchFeature:
        """Tokenize prompts with each `image_token` expanded to `num_image_tokens` ids, and make pixel_values.

        `images` holds one image per placeholder, in order across the batch (samples may
        have none). pixel_values: [N, 3, H, W], or [N, 1 + rows*cols, 3, H, W] with hi_res.
        """
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("text: expected a string or a non-empty list of strings")
        image_list = self._as_image_list(images)
        counts = [t.count(self.image_token) for t in texts]
        if sum(counts) != len(image_list):
            raise ValueError(
                f"images: text has {sum(counts)} {self.image_token} placeholders but {len(image_list)} images were given"
            )

        expanded = [t.replace(self.image_token, self.image_token * self.num_image_tokens) for t in texts]
        data = dict(
            self.tokenizer(
                expanded,
                padding=padding,
                padding_side=padding_side,
                truncation=truncation,
                max_length=max_length,
            )
        )
        self._check_visual_positions(data["input_ids"], counts)
        if image_list:
            data["pixel_values"] = self.pixel_values(image_list)
        return BatchFeature(data, tensor_type=return_tensors)

    @staticmethod
    def _as_image_list(images: Any) -> list:
        """None -> [], one image or path -> [it], a sequence -> list."""
        if images is None:
            return []
        if isinstance(images, (Image.Image, str, os.PathLike)):
            return [images]
        return list(images)

    def _check_visual_positions(self, input_ids: list[list[int]], counts: list[int]) -> None:
        """Every placeholder must give exactly M_v image ids (truncation may cut them)."""
        for i, (ids, count) in enumerate(zip(input_ids, counts)):
            found = sum(1 for token in ids if token == self.image_token_id)
            if found != count * self.num_image_tokens:
                raise ValueError(
                    f"text[{i}]: {count} {self.image_token} placeholders need {count * self.num_image_tokens} "
                    f"image tokens but {found} remain after tokenization (truncated? raise max_length)"
                )

    def pixel_values(self, images: list) -> np.ndarray:
        """Views of every image, normalised: [N, 3, H, W], or [N, V, 3, H, W] with V = 1 + rows*cols."""
        grid = self.crop_grid if self.hi_res else None
        views = [v for image in images for v in make_views(load_image(image), self.base_size, grid, self.pad_fill)]
        # Views are already base_size squares: the image processor only rescales and normalises.
        processed = self.image_processor(views, do_resize=False, do_center_crop=False, return_tensors="np")
        pixels = np.asarray(processed["pixel_values"], dtype=np.float32)  # [N*V, 3, H, W]
        if not self.hi_res:
            return pixels
        return pixels.reshape(len(images), -1, *pixels.shape[1:])  # [N, V, 3, H, W]: view 0 is low-res

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any:
        """Delegate to the tokenizer's chat template (or this processor's, if it has one)."""
        if self.chat_template is not None:
            kwargs.setdefault("chat_template", self.chat_template)
        return self.tokenizer.apply_chat_template(conversation, **kwargs)


__all__ = ["SparseCutProcessor", "add_image_token"]
