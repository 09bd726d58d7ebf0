"""Rendering a Hugging Face Jinja chat template exactly as transformers does (the reference that
Ollama templates are checked against)."""

from __future__ import annotations


def render_jinja(template: str, messages: list[dict[str, str]], *, bos_token: str = "", eos_token: str = "",
                 add_generation_prompt: bool = True) -> str:
    """Render a Hugging Face Jinja chat template the way transformers does."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            bos_token=bos_token, eos_token=eos_token)
