"""The model's tokenizer and chat template, loaded from the same directory as the weights."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tviz.errors import WeightsError


class Tokenizer:
    def __init__(self, directory: Path) -> None:
        from transformers import AutoTokenizer

        try:
            self.hf = AutoTokenizer.from_pretrained(str(directory))
        except (OSError, ValueError) as exc:
            raise WeightsError(f"tokenizer in {directory} cannot be loaded: {exc}") from None
        self.eos_token_id: int | None = self.hf.eos_token_id
        self.vocab_size = len(self.hf)

    def encode(self, text: str) -> list[int]:
        """A raw prompt as the model sees it (with the special tokens the tokenizer adds)."""
        return list(self.hf(text).input_ids)

    def render_chat(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
        return str(
            self.hf.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
        )

    def encode_chat(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        text = self.render_chat(messages, add_generation_prompt)
        return list(self.hf(text, add_special_tokens=False).input_ids)

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Each token decoded on its own (what a visualizer labels the axes with)."""
        return [str(self.hf.decode([i])) for i in ids]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens))
