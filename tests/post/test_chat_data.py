"""SFT data: the loss mask covers exactly the assistant's text, multi-turn; packing keeps conversations
whole; bad files fail with the file and line."""

from __future__ import annotations

import json

import pytest

from mai.errors import MaiError
from mai.interop import load_model
from mai.post.chat_data import check_messages, encode_conversation, pack
from mai.post.sft import encode_files
from mai.tokenizer import MaiTokenizer

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "A joke?"},
        {"role": "assistant", "content": "Why did the chicken cross the road?"}]


def masked_text(tok: MaiTokenizer, messages: list[dict], keep: bool) -> str:
    e = encode_conversation(tok, check_messages(messages, "t:1"), "t:1")
    return tok.decode([i for i, m in zip(e.ids, e.mask, strict=True) if m == keep], skip_special=False)


def test_mask_is_the_assistant_turns_mai_template(tiny_dir):
    tok = load_model(tiny_dir).tokenizer
    want = "Hello! How can I help?<|end|>\nWhy did the chicken cross the road?<|end|>\n"
    assert masked_text(tok, CHAT, True) == want
    context = masked_text(tok, CHAT, False)
    assert all(t in context for t in ("Hi there", "A joke?", "Be brief.")) and "Hello" not in context


@pytest.mark.slow
def test_mask_is_the_assistant_turns_smollm_template(smollm_gguf):
    tok = load_model(smollm_gguf).tokenizer  # ChatML with a default system prompt the template inserts
    assert masked_text(tok, CHAT[1:], True) == \
        "Hello! How can I help?<|im_end|>\nWhy did the chicken cross the road?<|im_end|>\n"
    assert "You are a helpful AI assistant" in masked_text(tok, CHAT[1:], False)


def test_packing_keeps_conversations_whole(tiny_dir):
    tok = load_model(tiny_dir).tokenizer
    items = [encode_conversation(tok, CHAT[:3], f"t:{i}") for i in range(5)]
    n = len(items[0].ids)
    tokens, mask = pack(items, 2 * n + 3, tok.pad_id, packing=True)
    assert tokens.shape == (3, 2 * n + 3)  # two per row, the fifth alone
    assert (tokens[0, :n] == items[0].ids).all() and (tokens[0, n:2 * n] == items[1].ids).all()
    assert not mask[:, 2 * n:].any() and (tokens[2, n:] == tok.pad_id).all()
    assert pack(items, 2 * n + 3, tok.pad_id, packing=False)[0].shape[0] == 5


@pytest.mark.parametrize(("line", "message"), [
    ('{"messages": [{"role": "bot", "content": "x"}]}', "2: message 0 has role 'bot'"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}',
     "2: message 1 (assistant) has empty"),
    ('{"messages": [{"role": "user", "content": "only a question"}]}',
     "2: the conversation has no assistant"),
    ('{"messages": [{"role": "user", "content": "hi"}', "2: not valid JSON"),
    ('{"conversation": []}', "2: expected an object with a 'messages' field"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"},
                              {"role": "assistant", "content": "word " * 3000}]}), "2: the conversation is"),
])
def test_bad_lines_name_file_and_line(tiny_dir, tmp_path, line, message):
    from mai.post.sft import prepare_sft

    tok = load_model(tiny_dir).tokenizer
    f = tmp_path / "chats.jsonl"
    f.write_text(json.dumps({"messages": CHAT}) + "\n" + line + "\n")
    with pytest.raises(MaiError, match=f"{f}:" + message.replace("(", r"\(").replace(")", r"\)")):
        prepare_sft(encode_files([f], tok), tok, tmp_path / "out", seq_len=256)


def test_tokenizer_without_chat_template(tiny_dir, tmp_path):
    tok = load_model(tiny_dir).tokenizer
    bare = MaiTokenizer(tok.tokenizer, tok.bos_token, tok.eos_token, tok.pad_token, None)
    f = tmp_path / "chats.jsonl"
    f.write_text(json.dumps({"messages": CHAT}) + "\n")
    with pytest.raises(MaiError, match=f"{f}:1: the tokenizer has no chat template"):
        encode_files([f], bare)
