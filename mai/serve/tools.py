"""OpenAI tool calling over a chat template: the call format a model writes, the prompt that shows it the
tools and the earlier calls and results, the grammar that holds its calls to the tools' schemas, and the
parser that turns its output back into ``tool_calls`` (whole, or as streamed deltas).

Two formats cover the common templates: Hermes/Qwen (``<tool_call>\\n{"name": ..., "arguments": ...}\\n
</tool_call>``, also used for templates that know no tools, such as SmolLM2's) and Llama 3 (a bare
``{"name": ..., "parameters": ...}``). A template that renders ``tools`` itself gets them as the Hugging
Face convention passes them; for any other the tools are described in a system message and earlier calls
and results are written into the turns as text in the same format. With tools offered (``tool_choice``
other than ``none``) the output follows xgrammar's structural tag of the format, so every call the parser
finds is well formed and its arguments match the function's schema.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mai.errors import MaiError
from mai.serve.errors import ApiError

if TYPE_CHECKING:
    from mai.infer.grammar import GrammarConstraints
    from mai.serve.protocol import ChatRequest


@dataclass(frozen=True)
class ToolFormat:
    """How one family of models writes a call: ``open + name + args + ARGUMENTS + close``."""

    name: str
    xgrammar_model: str  # the key of xgrammar's built-in structural tag for this format
    open: str
    args: str
    close: str
    instructions: str  # the system text for templates that do not render tools themselves

    def render(self, name: str, arguments: str) -> str:
        return f"{self.open}{name}{self.args}{arguments}{self.close}"


HERMES = ToolFormat(
    "hermes", "qwen_3", '<tool_call>\n{"name": "', '", "arguments": ', "}\n</tool_call>",
    "You may call one or more functions to assist with the user query. The functions are described "
    "within <tools></tools>:\n<tools>\n{tools}\n</tools>\nFor each call, return a JSON object with the "
    'function name and arguments within <tool_call></tool_call> tags:\n<tool_call>\n{{"name": '
    '<function-name>, "arguments": <args-json-object>}}\n</tool_call>')
LLAMA = ToolFormat(
    "llama", "llama", '{"name": "', '", "parameters": ', "}",
    "You have access to the following functions:\n{tools}\nTo call a function, respond with a JSON object "
    'of the form {{"name": function name, "parameters": dictionary of argument name and its value}}.')


def tool_format(chat_template: str | None) -> ToolFormat:
    """Llama 3's format for Llama-3-style templates, Hermes/Qwen's for every other one."""
    template = chat_template or ""
    return LLAMA if "<|start_header_id|>" in template or "<|python_tag|>" in template else HERMES


def offers_tools(body: ChatRequest) -> bool:
    return bool(body.tools) and body.tool_choice != "none"


# --- the prompt -------------------------------------------------------------------------------------
def chat_messages(body: ChatRequest, chat_template: str | None) -> tuple[list[dict[str, Any]], list | None]:
    """(messages for the chat template, tools for it or None). ``developer`` is ``system``."""
    fmt = tool_format(chat_template)
    native = "tools" in (chat_template or "")
    tools = [t.model_dump(exclude_none=True) for t in body.tools] if offers_tools(body) else None
    messages = []
    for m in body.messages:
        role = "system" if m.role == "developer" else m.role
        calls = [(c.function.name, c.function.arguments) for c in m.tool_calls or []]
        if native:
            item: dict[str, Any] = {"role": role, "content": m.text()}
            if calls:
                item["tool_calls"] = [{"type": "function", "function": {"name": n, "arguments": _args(a)}}
                                      for n, a in calls]
            if m.tool_call_id is not None:
                item["tool_call_id"] = m.tool_call_id
            messages.append(item)
        elif role == "tool":
            messages.append({"role": "user", "content": f"<tool_response>\n{m.text()}\n</tool_response>"})
        else:
            parts = [m.text()] * bool(m.text()) + [fmt.render(n, json.dumps(_args(a))) for n, a in calls]
            messages.append({"role": role, "content": "\n".join(parts)})
    if tools is not None and not native:
        described = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        system = fmt.instructions.format(tools=described)
        if messages and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": messages[0]["content"] + "\n\n" + system}
        else:
            messages.insert(0, {"role": "system", "content": system})
    return messages, (tools if native else None)


def _args(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        raise ApiError(400, f"tool call arguments are not JSON: {arguments[:80]!r}", "invalid_value",
                       "messages") from None


# --- the grammar ------------------------------------------------------------------------------------
def tool_grammar(body: ChatRequest, fmt: ToolFormat, grammars: GrammarConstraints) -> Any:
    """The compiled grammar of the request's tools in the model's call format; 400 when it cannot be."""
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
    choice = body.tool_choice if isinstance(body.tool_choice, str) else body.tool_choice.model_dump()
    try:
        return grammars.tool_calls(fmt.xgrammar_model, tools, choice, body.parallel_tool_calls)
    except MaiError as exc:
        raise ApiError(400, str(exc), "invalid_value", "tools") from None


# --- the parser -------------------------------------------------------------------------------------
@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str = ""

    def body(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ToolCallParser:
    """Splits a model's output, as it grows, into content and calls. ``feed`` returns the deltas that are
    certain now: ``("content", text)``, ``("call", index)`` (a new call: id and name known) and
    ``("arguments", index, fragment)``. Whitespace before a call and at the end is dropped, so the deltas
    of a stream add up to exactly what :meth:`message` gives for the whole text."""

    fmt: ToolFormat
    text: str = ""
    pos: int = 0
    state: str = "content"  # content | name | arguments | close
    calls: list[ToolCall] = field(default_factory=list)
    content: str = ""
    _depth: int = 0
    _in_string: bool = False
    _escaped: bool = False

    def feed(self, piece: str) -> list[tuple]:
        self.text += piece
        out: list[tuple] = []
        while self._step(out):
            pass
        return out

    def finish(self) -> list[tuple]:
        """The rest, at the end of the output (a call cut short keeps the arguments it has)."""
        out: list[tuple] = []
        if self.state in ("content", "close"):
            self._content(self.text[self.pos:], out)
        self.pos = len(self.text)
        return out

    def _content(self, piece: str, out: list[tuple]) -> None:
        piece = piece.rstrip()
        if piece:
            self.content += piece
            out.append(("content", piece))

    def _step(self, out: list[tuple]) -> bool:
        rest, fmt = self.text[self.pos:], self.fmt
        if self.state == "content":
            at = rest.find(fmt.open)
            if at >= 0:
                self._content(rest[:at], out)
                self.pos += at + len(fmt.open)
                self.state = "name"
                return True
            held = next((k for k in range(min(len(fmt.open) - 1, len(rest)), 0, -1)
                         if fmt.open.startswith(rest[-k:])), 0)
            safe = rest[: len(rest) - held].rstrip()  # trailing whitespace waits: dropped before a call
            if not safe:
                return False
            self._content(safe, out)
            self.pos += len(safe)
            return True
        if self.state == "name":
            at = rest.find(fmt.args)
            if at < 0:
                return False
            self.calls.append(ToolCall(f"call_{uuid.uuid4().hex[:24]}", rest[:at]))
            out.append(("call", len(self.calls) - 1))
            self.pos += at + len(fmt.args)
            self.state, self._depth, self._in_string, self._escaped = "arguments", 0, False, False
            return True
        if self.state == "arguments":
            end = self._scan(rest)
            piece = rest[:end]
            if piece:
                self.calls[-1].arguments += piece
                out.append(("arguments", len(self.calls) - 1, piece))
                self.pos += len(piece)
            if self._depth == 0 and self.calls[-1].arguments:
                self.state = "close"
                return True
            return False
        # close: the format's closing text, then content again
        if rest.startswith(fmt.close):
            self.pos += len(fmt.close)
            self.state = "content"
            return True
        if fmt.close.startswith(rest):
            return False
        self.state = "content"  # not the expected close: what follows is content
        return True

    def _scan(self, rest: str) -> int:
        """How much of ``rest`` belongs to the arguments object (JSON depth, strings respected)."""
        for i, ch in enumerate(rest):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return i + 1
        return len(rest)

    def message(self) -> tuple[str | None, list[dict[str, Any]]]:
        """(content or None, tool_calls) of the whole output."""
        return (self.content or None) if self.calls else self.content, [c.body() for c in self.calls]
