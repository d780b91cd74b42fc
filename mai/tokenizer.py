"""Train and load byte-level BPE tokenizers (Hugging Face ``tokenizers``), with MAI's chat format.

MAI's own tokenizers reserve ids 0..6 for the special tokens below and render conversations as
``<|role|>\\ncontent<|end|>\\n`` turns. Any other Hugging Face ``tokenizer.json`` (Llama, SmolLM, ...) loads
too; the ``tokenizer_config.json`` beside it, if any, names its BOS/EOS/PAD tokens and chat template.
The files written are the standard pair, so ``transformers.AutoTokenizer`` reads them as well.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mai.errors import MaiError
from mai.fileio import atomic_path, atomic_write_text

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
BOS, EOS, PAD, END = "<|bos|>", "<|eos|>", "<|pad|>", "<|end|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' ~ message['role'] ~ ': use system, user or assistant') }}"
    "{% endif %}"
    "{{ '<|' ~ message['role'] ~ '|>\n' ~ message['content'] ~ '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Names that foreign tokenizers without a tokenizer_config.json commonly use.
_GUESS = {
    "bos": ("<|bos|>", "<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"),
    "eos": ("<|eos|>", "</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|im_end|>"),
    "pad": ("<|pad|>", "<pad>", "[PAD]", "<|finetune_right_pad_id|>"),
}
# End-of-turn tokens of common chat formats: generation stops on these as well as on EOS.
_END_OF_TURN = (END, "<|im_end|>", "<|eot_id|>", "<end_of_turn>")


def _token_name(value: Any) -> str | None:
    """tokenizer_config.json stores special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


@functools.lru_cache(maxsize=16)
def _chat_template(source: str) -> Any:
    """The chat template compiled once: compiling a Jinja template costs ~8 ms, rendering a compiled one
    tens of microseconds, and every prompt of every request, training example and rollout is rendered."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(source)


def _raise_exception(message: str) -> None:
    raise MaiError(f"chat template: {message}")


class MaiTokenizer:
    """A ``tokenizers.Tokenizer`` plus the special-token names and chat template that go with it."""

    def __init__(self, tokenizer: Tokenizer, bos_token: str | None, eos_token: str | None,
                 pad_token: str | None = None, chat_template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.chat_template = chat_template
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        ids = {}
        for kind, name in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token)):
            if name is not None and name not in vocab:
                raise MaiError(f"{kind} token {name!r} is not in the tokenizer's vocabulary")
            ids[kind] = vocab[name] if name is not None else None
        if ids["eos"] is None:
            raise MaiError("the tokenizer has no EOS token: name it as eos_token in tokenizer_config.json")
        self.bos_id: int | None = ids["bos"]
        self.eos_id: int = ids["eos"]
        self._pad_id: int | None = ids["pad"]
        self.stop_ids: list[int] = [self.eos_id] + [
            vocab[t] for t in _END_OF_TURN if t in vocab and vocab[t] != self.eos_id]

    @property
    def pad_id(self) -> int:
        """The PAD token, or EOS for tokenizers without one (padding is masked out anyway)."""
        return self._pad_id if self._pad_id is not None else self.eos_id

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the serialised tokenizer (vocabulary, merges, pre-tokenizer); shards record it."""
        return hashlib.sha256(self.tokenizer.to_str().encode("utf-8")).hexdigest()

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many texts at once with the Rust batch encoder (multi-threaded)."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    @functools.cached_property
    def _text_only(self) -> Tokenizer:
        """A copy that encodes special-token strings as ordinary text (a separate instance: the flag is
        state on the Rust object, and other threads may be encoding prompts with this one)."""
        tok = Tokenizer.from_str(self.tokenizer.to_str())
        tok.encode_special_tokens = True
        return tok

    def encode_documents(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode raw documents for training data: a string such as ``<|endoftext|>`` inside web text is
        text, never a control token — the only special tokens in shards are the separators that data
        preparation adds itself."""
        return [e.ids for e in self._text_only.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def apply_chat_template(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                            tools: Sequence[dict[str, Any]] | None = None) -> str:
        """Render OpenAI-style ``[{"role", "content"}, ...]`` messages into the prompt text. ``tools``
        (OpenAI's ``[{"type": "function", "function": {...}}]``) reach templates that render them, as
        Hugging Face passes them; messages may carry ``tool_calls`` and ``tool_call_id`` the same way."""
        if not self.chat_template:
            raise MaiError("this tokenizer has no chat template "
                           "(add chat_template to its tokenizer_config.json)")
        from jinja2 import TemplateError

        try:
            return _chat_template(self.chat_template).render(
                messages=list(messages), add_generation_prompt=add_generation_prompt,
                tools=list(tools) if tools is not None else None,
                bos_token=self.bos_token or "", eos_token=self.eos_token or "",
                pad_token=self.pad_token or "")
        except TemplateError as exc:
            raise MaiError(f"chat template failed: {exc}") from exc

    def save(self, out_dir: str | Path) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (readable by transformers) into out_dir."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "tokenizer.json") as tmp:
            self.tokenizer.save(str(tmp))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": self.bos_token,
                  "eos_token": self.eos_token, "pad_token": self.pad_token, "add_bos_token": False,
                  "clean_up_tokenization_spaces": False, "chat_template": self.chat_template}
        text = json.dumps(config, indent=1, ensure_ascii=False) + "\n"
        atomic_write_text(out / "tokenizer_config.json", text)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> MaiTokenizer:
    """Train a byte-level BPE tokenizer with MAI's special tokens (ids 0..6) and save it in out_dir."""
    floor = 256 + len(SPECIAL_TOKENS)  # every byte plus the special tokens
    if vocab_size < floor:
        raise MaiError(f"vocab_size must be at least {floor} "
                       f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    seen = 0

    def counted() -> Iterator[str]:
        nonlocal seen
        for text in texts:
            seen += 1
            yield text

    tok.train_from_iterator(counted(), trainer)
    if seen == 0:
        raise MaiError("no text to train the tokenizer on: the inputs hold no documents")
    result = MaiTokenizer(tok, BOS, EOS, PAD, CHAT_TEMPLATE)
    result.save(out_dir)
    return result


def load_tokenizer(path: str | Path) -> MaiTokenizer:
    """Load a tokenizer from a directory holding tokenizer.json, or from a tokenizer.json file."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise MaiError(f"no tokenizer at {path}: expected a tokenizer.json file or a directory holding one "
                       "(train one with `mai tokenizer train`)")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:  # the Rust side raises plain Exception for every kind of bad file
        raise MaiError(f"cannot load tokenizer {file}: {exc}") from exc
    config: dict[str, Any] = {}
    config_file = file.with_name("tokenizer_config.json")
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MaiError(f"cannot read {config_file}: {exc}") from exc
    template = config.get("chat_template")
    if isinstance(template, list):  # older transformers: a list of named templates
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    jinja_file = file.with_name("chat_template.jinja")  # newer transformers keep the template beside
    if template is None and jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    vocab = tok.get_vocab(with_added_tokens=True)
    names = {}
    for kind, guesses in _GUESS.items():
        key = f"{kind}_token"
        guess = next((g for g in guesses if g in vocab), None)
        names[kind] = _token_name(config[key]) if key in config else guess
    return MaiTokenizer(tok, names["bos"], names["eos"], names["pad"], template)
