"""Prompt rendering shared by the tasks, and which (task, model) pairs get a chat template.

Published setups do not wrap every benchmark of a chat model in its chat template: the
power-sampling paper, for one, gives Phi-3.5-mini-instruct MATH500 as a chat turn but
HumanEval, GPQA and AlpacaEval as raw text. A model's ``chat_template`` setting is therefore
either a bool (every task or none) or the list of task names that get the template, and
:func:`uses_chat_template` turns it into the bool a task's ``prompt`` takes.
"""

from __future__ import annotations

from collections.abc import Collection

from powersampling.errors import UserError


def uses_chat_template(setting: bool | Collection[str] | None, task_name: str) -> bool:
    """Whether the task called ``task_name`` is prompted through the model's chat template.

    ``setting`` is the model's ``chat_template`` config value: ``True`` (every task),
    ``False`` or ``None`` (no task), or a list of task names (only those tasks). A bare
    string is refused rather than read as a collection of characters, since
    ``chat_template: math500`` is an easy slip for ``chat_template: [math500]``.
    """
    if setting is None or isinstance(setting, bool):
        return bool(setting)
    if isinstance(setting, str) or not isinstance(setting, Collection):
        raise UserError(
            f"chat_template must be true, false or a list of task names, got {setting!r}"
        )
    return task_name in setting


def render_prompt(text: str, tokenizer=None, chat_template: bool = False) -> str:
    """``text`` as is, or as one user turn in the tokenizer's chat template (with the
    assistant's turn opened, so that the model's first token is its answer)."""
    if not chat_template:
        return text
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise UserError(
            "chat_template is on for this task but the model's tokenizer has no chat template; "
            "leave the task out of the model's chat_template setting"
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
