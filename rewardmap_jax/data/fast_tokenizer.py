"""A light tokenizer for Grain workers: `tokenizers` + the directory's jinja chat template.

Importing transformers costs seconds per worker process; the pipeline only needs encode, the chat
template and token lookups, which `tokenizers.Tokenizer` (the same `tokenizer.json`) and jinja2
(with the environment settings transformers uses) provide. `tests/data/test_fast_tokenizer.py`
checks it against `transformers.AutoTokenizer` on the same directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rewardmap_jax.data.tokenizer import resolve_dir


def _token_str(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def _chat_template(path: Path, config: dict) -> str:
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    js = path / "chat_template.json"  # processor-level template (older Qwen2.5-VL dirs)
    if js.is_file():
        return json.loads(js.read_text(encoding="utf-8"))["chat_template"]
    template = config.get("chat_template")
    if isinstance(template, str):
        return template
    raise ValueError(f"no chat template in {path} (chat_template.jinja/.json/tokenizer_config)")


class FastTokenizer:
    """The subset of the transformers tokenizer API that `prompts` uses."""

    def __init__(self, path_or_builtin: str | os.PathLike) -> None:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from tokenizers import Tokenizer

        path = resolve_dir(path_or_builtin)
        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            raise FileNotFoundError(f"{tok_file} not found (the fast tokenizer needs it)")
        self._tok = Tokenizer.from_file(str(tok_file))
        cfg_file = path / "tokenizer_config.json"
        config = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
        self.pad_token = _token_str(config.get("pad_token"))
        self.eos_token = _token_str(config.get("eos_token"))
        self.unk_token_id = None

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        # transformers' settings (utils/chat_template_utils.py::_compile_jinja_template)
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        env.globals["raise_exception"] = raise_exception
        self._template = env.from_string(_chat_template(path, config))

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self._tok.token_to_id(self.pad_token)

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self._tok.token_to_id(self.eos_token)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self._tok.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: list[dict],
        tokenize: bool = False,
        add_generation_prompt: bool = False,
        **kwargs: Any,
    ) -> str | list[int]:
        text = self._template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, **kwargs
        )
        return self(text)["input_ids"] if tokenize else text
