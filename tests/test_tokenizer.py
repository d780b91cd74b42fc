"""Byte-level BPE training, special tokens, chat template, foreign tokenizer.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mai.data.corpus import default_corpus
from mai.errors import MaiError
from mai.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, MaiTokenizer, load_tokenizer, train_tokenizer

SAMPLES = [
    "Hello, world!",
    "  leading and trailing spaces  \n\ttabs\r\nand CRLF",
    "Ünïcödé: naïve café, Straße, Ελληνικά, русский, 中文字符, 日本語のテキスト, 한국어",
    "Emoji: 😀🚀👩‍👩‍👧‍👦 🇫🇷 and a ZWJ sequence",
    "control \x00 \x07 bytes and a lone combining mark \u0301",
    "",
]
MESSAGES = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "Hi 😀"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(default_corpus(limit=300), 1000, out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir: Path) -> MaiTokenizer:
    return load_tokenizer(tok_dir)


def test_round_trip_every_text(tok: MaiTokenizer) -> None:
    for text in SAMPLES:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    assert tok.encode_batch(SAMPLES) == [tok.encode(t) for t in SAMPLES]
    assert len(tok.encode("the history of the")) < len("the history of the")  # merges were learned


def test_special_tokens_have_fixed_ids(tok: MaiTokenizer, tok_dir: Path) -> None:
    assert [tok.tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(7))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert tok.stop_ids == [1, 6]
    assert tok.encode("hi", add_bos=True)[0] == 0
    assert tok.encode("a<|end|>b")[1:2] == [6]  # a special token in text is one id
    assert tok.decode(tok.encode("a<|end|>b")) == "ab"
    assert tok.decode(tok.encode("a<|end|>b"), skip_special=False) == "a<|end|>b"
    assert tok.vocab_size == 1000
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    names = (config["bos_token"], config["eos_token"], config["pad_token"])
    assert names == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert config["chat_template"] == CHAT_TEMPLATE


def test_fingerprint_survives_save_and_load(tok: MaiTokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.fingerprint == tok.fingerprint and len(tok.fingerprint) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]


def test_chat_template(tok: MaiTokenizer) -> None:
    text = tok.apply_chat_template(MESSAGES)
    assert text == ("<|system|>\nYou are brief.<|end|>\n<|user|>\nHi 😀<|end|>\n"
                    "<|assistant|>\nHello!<|end|>\n<|user|>\nBye<|end|>\n<|assistant|>\n")
    assert tok.apply_chat_template(MESSAGES, add_generation_prompt=False) == text[: -len("<|assistant|>\n")]
    ids = tok.encode(text)
    assert ids.count(6) == 4 and ids.count(4) == 2 and ids.count(5) == 2 and ids.count(3) == 1
    with pytest.raises(MaiError, match="unknown role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])


def test_transformers_reads_the_same_tokenizer(tok: MaiTokenizer, tok_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    assert hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == \
        tok.apply_chat_template(MESSAGES)
    for text in SAMPLES:
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (0, 1, 2)


def _foreign(path: Path, specials: list[str]) -> Path:
    """A tokenizer made elsewhere: byte-level BPE with other special tokens at other ids."""
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(["some text to learn a few merges from"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    path.mkdir(parents=True, exist_ok=True)
    t.save(str(path / "tokenizer.json"))
    return path


def test_foreign_tokenizer_with_config(tmp_path: Path) -> None:
    d = _foreign(tmp_path / "chatml", ["<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": None, "eos_token": {"content": "<|im_end|>", "special": True}, "pad_token": None,
        "chat_template": template}))
    tok = load_tokenizer(d)
    assert tok.bos_id is None and tok.eos_id == 2 and tok.pad_id == 2  # no PAD: falls back to EOS
    assert tok.stop_ids == [2]
    assert tok.encode("text", add_bos=True) == tok.encode("text")  # no BOS to add
    assert tok.decode(tok.encode("some text ü")) == "some text ü"
    expected = "<|im_start|>user\nHi 😀<|im_end|>\n<|im_start|>assistant\n"
    assert tok.apply_chat_template(MESSAGES[1:2]) == expected


def test_foreign_tokenizer_without_config_guesses_names(tmp_path: Path) -> None:
    d = _foreign(tmp_path / "llama", ["<unk>", "<s>", "</s>"])
    tok = load_tokenizer(d / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.chat_template) == (1, 2, 2, None)
    with pytest.raises(MaiError, match="no chat template"):
        tok.apply_chat_template(MESSAGES)
    bare = _foreign(tmp_path / "bare", ["<unk>"])
    with pytest.raises(MaiError, match="no EOS token"):
        load_tokenizer(bare)
    (bare / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<nope>"}))
    with pytest.raises(MaiError, match="'<nope>' is not in the tokenizer's vocabulary"):
        load_tokenizer(bare)


def test_missing_or_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(MaiError, match="no tokenizer at"):
        load_tokenizer(tmp_path / "nothing")
    with pytest.raises(MaiError, match="no tokenizer at"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    with pytest.raises(MaiError, match="cannot load tokenizer"):
        load_tokenizer(tmp_path)


def test_training_errors(tmp_path: Path) -> None:
    with pytest.raises(MaiError, match="at least 263"):
        train_tokenizer(["abc"], 100, tmp_path)
    with pytest.raises(MaiError, match="no text"):
        train_tokenizer([], 500, tmp_path)
    assert not (tmp_path / "tokenizer.json").exists()


def test_chat_template_receives_tools(tmp_path: Path) -> None:
    """A template that renders tools gets them, and messages' tool_calls, as Hugging Face passes them."""
    d = _foreign(tmp_path / "tools", ["<unk>", "<|im_start|>", "<|im_end|>"])
    template = ("{% if tools %}{% for t in tools %}[{{ t.function.name }}]{% endfor %}{{ '\n' }}{% endif %}"
                "{% for m in messages %}{{ m.role }}: {{ m.content }}"
                "{% for c in m.tool_calls or [] %}<{{ c.function.name }} {{ c.function.arguments | tojson }}>"
                "{% endfor %}{{ '\n' }}{% endfor %}")
    config = {"eos_token": "<|im_end|>", "chat_template": template}
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(d)
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": "time?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "get_time", "arguments": {"tz": "UTC"}}}]}]
    assert tok.apply_chat_template(messages, tools=tools) == \
        '[get_time]\nuser: time?\nassistant: <get_time {"tz": "UTC"}>\n'
    assert tok.apply_chat_template(messages[:1]) == "user: time?\n"  # no tools: none rendered
