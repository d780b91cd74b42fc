"""Chat data for SFT: OpenAI-messages JSONL → the model's chat template → tokens + an assistant-only mask.

Each line is ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``. The loss mask
is found by rendering the conversation prefix by prefix: the text that message *i* (an assistant message)
adds to the rendering, including the template's end-of-turn marker, is the text the model learns to write;
everything else (system prompt, user turns, role headers) is context. Conversations are packed whole into
rows of ``seq_len + 1`` tokens (no conversation is split; the rest of a row is padding, out of the loss).
Bad lines raise :class:`MaiError` naming the file and line.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mai.errors import MaiError
from mai.fileio import read_jsonl_records
from mai.tokenizer import MaiTokenizer

ROLES = ("system", "user", "assistant")


@dataclass
class Encoded:
    ids: list[int]
    mask: list[bool]  # True where the token is written by the assistant (a training target)
    where: str  # "file:line", for messages


def check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise MaiError(f"{where}: \"messages\" must be a non-empty list of {{role, content}} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, dict) else m
            raise MaiError(f"{where}: message {i} has role {role!r}; roles are {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise MaiError(f"{where}: message {i} ({m['role']}) has empty or non-text content")
        if m["role"] == "system" and i:
            raise MaiError(f"{where}: message {i} is a system message; only the first message may be one")
    if not any(m["role"] == "assistant" for m in messages):
        raise MaiError(f"{where}: the conversation has no assistant message, so nothing to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_jsonl(path: str | Path, key: str | None = "messages") -> Iterator[tuple[Any, str]]:
    """(record, "file:line") for every non-blank line; ``key`` picks a field (a bare list is accepted)."""
    return read_jsonl_records(path, key)


def encode_conversation(tok: MaiTokenizer, messages: list[dict[str, str]], where: str,
                        last_only: bool = False) -> Encoded:
    """Render with the chat template; mark the characters each assistant message adds (or only the last
    message's, for DPO responses); map them to tokens."""
    if not tok.chat_template:
        raise MaiError(f"{where}: the tokenizer has no chat template, so conversations cannot be rendered "
                       "(add chat_template to its tokenizer_config.json)")
    full = tok.apply_chat_template(messages, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or (last_only and i != len(messages) - 1):
            continue
        before = tok.apply_chat_template(messages[:i], add_generation_prompt=True) if i else ""
        through = tok.apply_chat_template(messages[: i + 1], add_generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through)):
            raise MaiError(f"{where}: the chat template does not render conversations prefix by prefix, "
                           "so the assistant tokens cannot be found")
        spans.append((len(before), len(through)))
    enc = tok.tokenizer.encode(full, add_special_tokens=False)
    mask = [any(a <= start < b for a, b in spans) for start, _ in enc.offsets]
    return Encoded(list(enc.ids), mask, where)


def pack(items: Sequence[Encoded], row_len: int, pad_id: int, packing: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``row_len`` tokens, conversations kept whole, padding masked out."""
    rows: list[tuple[list[int], list[bool]]] = []
    for e in items:
        if len(e.ids) > row_len:
            raise MaiError(f"{e.where}: the conversation is {len(e.ids)} tokens, longer than the context of "
                           f"{row_len} (data.seq_len + 1); shorten it or raise data.seq_len")
        if packing and rows and len(rows[-1][0]) + len(e.ids) <= row_len:
            rows[-1][0].extend(e.ids)
            rows[-1][1].extend(e.mask)
        else:
            rows.append((list(e.ids), list(e.mask)))
    tokens = np.full((len(rows), row_len), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), row_len), dtype=bool)
    for r, (ids, m) in enumerate(rows):
        tokens[r, : len(ids)] = ids
        mask[r, : len(m)] = m
    return tokens, mask


def chitchat_conversations(limit: int | None = None) -> Iterator[list[dict[str, str]]]:
    """The ``chitchat-dataset`` package's human conversations (read from its files, not imported) as
    alternating user/assistant turns; a turn's several lines join with newlines."""
    spec = importlib.util.find_spec("chitchat_dataset")
    locations = spec.submodule_search_locations if spec else None
    folder = Path(next(iter(locations))) if locations else None
    if folder is None or not (folder / "dataset.json").is_file():
        raise MaiError("the demo chat data is not installed: pip install --no-deps chitchat-dataset==0.9.0")
    data = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    for n, convo in enumerate(data.values()):
        if limit is not None and n >= limit:
            return
        turns = ["\n".join(m["text"].strip() for m in turn if m["text"].strip())
                 for turn in convo["messages"]]
        turns = [t for t in turns if t]
        if len(turns) >= 2:
            yield [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]


def synth_conversations(work_dir: str | Path) -> Iterator[tuple[list[dict[str, str]], str]]:
    """Instruction data from a ``mai data synth`` run: each document the pipeline kept (``WORK_DIR/output``)
    becomes the conversation [user: the prompt the teacher got, assistant: its text after the pipeline's
    steps], with the document id as its place for error messages."""
    from mai.data.pipeline.files import read_jsonl as read_docs

    output = Path(work_dir) / "output"
    files = sorted(output.rglob("*.jsonl*")) if output.is_dir() else []
    if not files:
        raise MaiError(f"{work_dir} holds no synthetic documents (mai data synth writes {output}/*.zst)")
    for path in files:
        for doc in read_docs(path):
            prompt = doc.get("metadata", {}).get("provenance", {}).get("prompt")
            if not prompt or not doc.get("text"):
                raise MaiError(f"{path}: document {doc.get('id')} has no teacher prompt in its provenance "
                               "(not a mai data synth output)")
            yield ([{"role": "user", "content": prompt}, {"role": "assistant", "content": doc["text"]}],
                   f"{path} document {doc['id']}")
