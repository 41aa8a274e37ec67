"""Prompt rendering shared by the tasks: plain text for base models, a chat turn otherwise."""

from __future__ import annotations

from powersampling.errors import UserError


def render_prompt(text: str, tokenizer=None, chat_template: bool = False) -> str:
    """``text`` as is (base models) or as one user turn in the tokenizer's chat template."""
    if not chat_template:
        return text
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise UserError(
            "chat_template is true but the model's tokenizer has no chat template; "
            "set chat_template: false for this model"
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
