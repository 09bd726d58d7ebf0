"""Ollama's chat prompt: chat messages rendered through a Go TEMPLATE as Ollama's
`template.Template.Execute` does (`render_chat`).

A template that mentions `.Messages` runs once with the system messages joined by "\\n\\n" into
`.System` and consecutive same-role messages merged (except tool); any other template runs once per
system/user/assistant turn with `.System`, `.Prompt` and `.Response`, and for the last turn
everything after `{{ .Response }}` is cut. A template mentioning neither `.Messages` nor
`.Response` gets `{{ .Response }}` appended.
"""

from __future__ import annotations

import json
from typing import Any

from toolkit.chat.gotemplate.nodes import Action, Branch, Field, Pipe, SubPipe
from toolkit.chat.gotemplate.parser import Template, parse
from toolkit.chat.gotemplate.values import GoStruct, JSONMap
from toolkit.errors import ConfigError


def _get(d: dict, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if key in d and d[key] is not None:
            return d[key]
    return default


def _tool_call(call: dict) -> GoStruct:
    fn = _get(call, "function", "Function", default={})
    args = _get(fn, "arguments", "Arguments", default={})
    if isinstance(args, str):  # OpenAI style: arguments as a JSON string
        args = json.loads(args) if args.strip() else {}
    function = GoStruct("api.ToolCallFunction", [
        ("Index", "index", _get(fn, "index", "Index", default=0)),
        ("Name", "name", _get(fn, "name", "Name", default="")),
        ("Arguments", "arguments", JSONMap(args))])
    return GoStruct("api.ToolCall", [("ID", "id,omitempty", _get(call, "id", "ID", default="")),
                                     ("Function", "function", function)])


def _message(m: dict) -> GoStruct:
    """An api.Message from a chat message dict (Ollama/OpenAI JSON field names)."""
    if not isinstance(m, dict) or "role" not in m:
        raise ConfigError(f"chat message {m!r} needs a role", fix='use {"role": ..., "content": ...}')
    calls = _get(m, "tool_calls", default=None)
    return GoStruct("api.Message", [
        ("Role", "role", m["role"]),
        ("Content", "content", _get(m, "content", default="")),
        ("Thinking", "thinking,omitempty", _get(m, "thinking", default="")),
        ("Images", "images,omitempty", _get(m, "images", default=None)),
        ("ToolCalls", "tool_calls,omitempty", [_tool_call(c) for c in calls] if calls else None),
        ("ToolName", "tool_name,omitempty", _get(m, "tool_name", "name", default="")),
        ("ToolCallID", "tool_call_id,omitempty", _get(m, "tool_call_id", default=""))])


def _property(p: dict) -> GoStruct:
    return GoStruct("api.ToolProperty", [
        ("Type", "type,omitempty", _get(p, "type", default=None)),
        ("Items", "items,omitempty", _get(p, "items", default=None)),
        ("Description", "description,omitempty", _get(p, "description", default="")),
        ("Enum", "enum,omitempty", _get(p, "enum", default=None))])


def _tool(t: dict) -> GoStruct:
    """An api.Tool from the OpenAI-style tool schema Ollama's API takes."""
    fn = _get(t, "function", default={})
    params = _get(fn, "parameters", default={})
    properties = {k: _property(v) for k, v in (_get(params, "properties", default={}) or {}).items()}
    parameters = GoStruct("api.ToolFunctionParameters", [
        ("Type", "type", _get(params, "type", default="")),
        ("Defs", "$defs,omitempty", _get(params, "$defs", default=None)),
        ("Items", "items,omitempty", _get(params, "items", default=None)),
        ("Required", "required,omitempty", _get(params, "required", default=None)),
        ("Properties", "properties", properties)])
    function = GoStruct("api.ToolFunction", [
        ("Name", "name", _get(fn, "name", default="")),
        ("Description", "description,omitempty", _get(fn, "description", default="")),
        ("Parameters", "parameters", parameters)], stringer=True)
    return GoStruct("api.Tool", [("Type", "type", _get(t, "type", default="function")),
                                 ("Items", "items,omitempty", _get(t, "items", default=None)),
                                 ("Function", "function", function)], stringer=True)


def collate(messages: list[GoStruct]) -> tuple[str, list[GoStruct]]:
    """Ollama's collate: (system messages joined by "\\n\\n", same-role runs merged except tool)."""
    system: list[str] = []
    out: list[GoStruct] = []
    for m in messages:
        if m["Role"] == "system":
            system.append(m["Content"])
        if out and out[-1]["Role"] == m["Role"] and m["Role"] != "tool":
            out[-1]["Content"] += "\n\n" + m["Content"]
        else:
            out.append(m)
    return "\n\n".join(system), out


_RESPONSE_ACTION = Action(Pipe([], False, [[Field(("Response",))]]))


def _cut_after_response(nodes: list) -> list:
    """A copy of the tree without anything after the first `.Response` field (Ollama's deleteNode).

    Like Ollama it walks list items, branch bodies and action pipelines in order; branch
    conditions are not looked at, and `$.Response` (a variable) does not count.
    """
    state = {"cut": False}

    def hit(node: Any) -> bool:
        if isinstance(node, Field) and "Response" in node.idents:
            state["cut"] = True
            return False
        return state["cut"]

    def walk_list(items: list) -> list:
        kept = []
        for item in items:
            new = walk(item)
            if new is not None:
                kept.append(new)
        return kept

    def walk_pipe(pipe: Pipe) -> Pipe | None:
        cmds = []
        for cmd in pipe.cmds:
            args = [a for a in (walk(arg) for arg in cmd) if a is not None]
            if not args:
                return None
            cmds.append(args)
        return Pipe(pipe.decl, pipe.assign, cmds, pipe.line) if cmds else None

    def walk(node: Any) -> Any:
        if hit(node):
            return None
        if isinstance(node, Branch):
            body = walk_list(node.body)
            else_ = None if node.else_ is None else ([] if state["cut"] else walk_list(node.else_))
            return Branch(node.kind, node.pipe, body, else_)
        if isinstance(node, Action):
            pipe = walk_pipe(node.pipe)
            return None if pipe is None else Action(pipe)
        if isinstance(node, SubPipe):
            pipe = walk_pipe(node.pipe)
            return None if pipe is None else SubPipe(pipe)
        return node

    return walk_list(nodes)


def render_chat(template: str, messages: list[dict], *, tools: list[dict] | None = None,
                system: str | None = None) -> str:
    """The prompt Ollama builds from a Go TEMPLATE for a chat request.

    `messages` are chat dicts (role, content, and optionally images, tool_calls, tool_name,
    tool_call_id, thinking); `tools` use the OpenAI/Ollama schema. `system` is a Modelfile
    SYSTEM: like Ollama it is put first when the conversation does not start with a system
    message. Raises TemplateError for a broken template.
    """
    tmpl = parse(template)
    names = tmpl.identifiers()
    root = tmpl.root
    if "messages" not in names and "response" not in names:
        root = root + [_RESPONSE_ACTION]  # Ollama appends {{ .Response }} to such templates
    if system and (not messages or messages[0].get("role") != "system"):
        messages = [{"role": "system", "content": system}, *messages]
    sys_text, msgs = collate([_message(m) for m in messages])
    think = {"Think": False, "ThinkLevel": "", "IsThinkSet": False}
    if "messages" in names or "document" in names:
        data = {"System": sys_text, "Messages": msgs, "Tools": [_tool(t) for t in tools or []],
                "Response": "", **think}
        return tmpl.execute(data, root)
    return _render_legacy(tmpl, root, msgs, think)


def _render_legacy(tmpl: Template, root: list, msgs: list[GoStruct], think: dict) -> str:
    """Run a .System/.Prompt/.Response template once per turn; cut the last after .Response."""
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        out.append(tmpl.execute({**turn, **think}, root))
        turn.update(System="", Prompt="", Response="")

    for m in msgs:
        role, content = m["Role"], m["Content"]
        if role == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = content
        elif role == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = content
        elif role == "assistant":
            turn["Response"] = content
    out.append(tmpl.execute({**turn, **think}, _cut_after_response(root)))
    return "".join(out)
