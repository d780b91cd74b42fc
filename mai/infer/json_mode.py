"""JSON mode (OpenAI's ``response_format: {"type": "json_object"}``): the output is one JSON object.

A character-level pushdown automaton tracks where the text so far stands in the JSON grammar. Before
each sampling step the most likely tokens are checked against it and every token that would break the
grammar is masked; end-of-text is allowed only once the object is closed, and is forced then. If the
token budget runs out first, :meth:`JsonConstraint.closing` gives the shortest text that completes the
object, so the answer always parses.
"""

from __future__ import annotations

import torch

WS = " \t\n\r"
HEX = "0123456789abcdefABCDEF"
MAX_WS_RUN = 3  # keeps a model from looping on blank lines inside the object
# number sub-states that may end the number
_NUM_END = {"zero", "int", "frac", "exp_digits"}

# State: (mode, stack, aux, ws_run). mode is one of: top, obj_first (after '{'), obj_key (after ','),
# colon, value, arr_first (after '['), after (after a value), str, esc, uni, num, lit, done.
# aux: for str/esc/uni "k"/"v" (key or value string) [+ hex count]; for num the sub-state; for lit the rest.
State = tuple[str, str, str, int]


def _end_value(stack: str) -> State:
    return ("after", stack, "", 0) if stack else ("done", "", "", 0)


def step(state: State, ch: str) -> State | None:
    """The state after ``ch``, or None when ``ch`` cannot come next."""
    mode, stack, aux, ws = state
    if mode in ("str", "esc", "uni"):
        kind = aux[0]
        if mode == "esc":
            if ch == "u":
                return ("uni", stack, kind + "0", 0)
            return ("str", stack, kind, 0) if ch in '"\\/bfnrt' else None
        if mode == "uni":
            if ch not in HEX:
                return None
            n = int(aux[1:]) + 1
            return ("str", stack, kind, 0) if n == 4 else ("uni", stack, f"{kind}{n}", 0)
        if ch == '"':
            return ("colon", stack, "", 0) if kind == "k" else _end_value(stack)
        if ch == "\\":
            return ("esc", stack, kind, 0)
        return None if ord(ch) < 0x20 else state
    if mode == "num":
        nxt = _number(aux, ch)
        if nxt is not None:
            return ("num", stack, nxt, 0)
        return step(_end_value(stack), ch) if aux in _NUM_END else None
    if mode == "lit":
        return (("lit", stack, aux[1:], 0) if len(aux) > 1 else _end_value(stack)) if ch == aux[0] else None
    if ch in WS:
        return None if ws >= MAX_WS_RUN or mode == "done" else (mode, stack, aux, ws + 1)
    if mode == "top":
        return ("obj_first", "{", "", 0) if ch == "{" else None
    if mode in ("obj_first", "obj_key"):
        if ch == '"':
            return ("str", stack, "k", 0)
        return _end_value(stack[:-1]) if ch == "}" and mode == "obj_first" else None
    if mode == "colon":
        return ("value", stack, "", 0) if ch == ":" else None
    if mode == "after":
        if ch == ",":
            return ("obj_key", stack, "", 0) if stack[-1] == "{" else ("value", stack, "", 0)
        if (ch == "}" and stack[-1] == "{") or (ch == "]" and stack[-1] == "["):
            return _end_value(stack[:-1])
        return None
    if mode in ("value", "arr_first"):
        if mode == "arr_first" and ch == "]":
            return _end_value(stack[:-1])
        if ch == "{":
            return ("obj_first", stack + "{", "", 0)
        if ch == "[":
            return ("arr_first", stack + "[", "", 0)
        if ch == '"':
            return ("str", stack, "v", 0)
        for word in ("true", "false", "null"):
            if ch == word[0]:
                return ("lit", stack, word[1:], 0)
        nxt = _number("start", ch)
        return ("num", stack, nxt, 0) if nxt else None
    return None  # done: nothing but the end of text


def _number(sub: str, ch: str) -> str | None:
    digit = ch.isascii() and ch.isdigit()
    table = {
        "start": "sign" if ch == "-" else ("zero" if ch == "0" else "int" if digit else None),
        "sign": "zero" if ch == "0" else ("int" if digit else None),
        "zero": "dot" if ch == "." else ("exp" if ch in "eE" else None),
        "int": "int" if digit else ("dot" if ch == "." else "exp" if ch in "eE" else None),
        "dot": "frac" if digit else None,
        "frac": "frac" if digit else ("exp" if ch in "eE" else None),
        "exp": "exp_sign" if ch in "+-" else ("exp_digits" if digit else None),
        "exp_sign": "exp_digits" if digit else None,
        "exp_digits": "exp_digits" if digit else None,
    }
    return table[sub]


def closing(state: State) -> str:
    """The shortest text that completes a JSON object from ``state``."""
    mode, stack, aux, _ = state
    head = {"top": "{}", "obj_key": '"":null', "colon": ":null", "value": "null"}.get(mode, "")
    if mode in ("str", "esc", "uni"):
        head = {"esc": "n", "uni": "0" * (4 - int(aux[1:] or 0))}.get(mode, "") + '"'
        head += ":null" if aux[0] == "k" else ""
    elif mode == "num":
        head = "" if aux in _NUM_END else "0"
    elif mode == "lit":
        head = aux
    return head + "".join("}" if c == "{" else "]" for c in reversed(stack))


class JsonConstraint:
    """Per-request grammar state over a vocabulary given as the text of each token id."""

    def __init__(self, token_texts: list[str], keep: int = 40, scan: int = 4096):
        self.texts = token_texts
        self.state: State = ("top", "", "", 0)
        self.keep, self.scan = keep, scan

    @property
    def complete(self) -> bool:
        return self.state[0] == "done"

    def _after(self, text: str) -> State | None:
        state: State | None = self.state
        for ch in text:
            state = step(state, ch)
            if state is None:
                return None
        return state

    def mask(self, logits: torch.Tensor, stop_ids: set[int]) -> torch.Tensor:
        """Keep the ``keep`` most likely grammar-valid tokens (all of ``stop_ids`` once complete)."""
        out = torch.full_like(logits, float("-inf"))
        if self.complete:
            ids = list(stop_ids)
            out[ids] = logits[ids]
            return out
        allowed = []
        for i in logits.argsort(descending=True)[: self.scan].tolist():
            text = self.texts[i]
            if i not in stop_ids and text and self._after(text) is not None:
                allowed.append(i)
                if len(allowed) == self.keep:
                    break
        if not allowed:  # nothing likely fits: take the shortest way forward
            allowed = [i for i, t in enumerate(self.texts) if t and t == closing(self.state)[: len(t)]][:1]
        out[allowed] = logits[allowed]
        return out

    def advance(self, token: int) -> None:
        self.state = self._after(self.texts[token]) or self.state

    def closing(self) -> str:
        return closing(self.state)
