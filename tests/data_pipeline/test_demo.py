"""The demo pipeline (configs/data/demo.yaml) end to end on real text: the default corpus plus a WARC of
real HTML pages, through every filter, dedup and decontamination, into one token dataset per source that
the training sampler mixes by weight."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mai.data.corpus import default_corpus
from mai.data.sampler import MixtureSampler
from mai.data.shards import TokenDataset
from mai.tokenizer import load_tokenizer, train_tokenizer
from tests.data_pipeline.conftest import html_page, write_warc

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_demo_pipeline_into_mixed_training_shards(tmp_path: Path) -> None:
    corpus = list(default_corpus(600))
    long = [t for t in corpus if len(t.split()) >= 60]
    other = [t for t in list(default_corpus(3000))[600:] if len(t.split()) >= 60]
    pages = [(f"https://news{i % 5}.example.org/a/{i}", html_page(f"Story {i}", other[2 * i:2 * i + 2]))
             for i in range(30)]
    pages.append(("https://spam.example/buy", html_page("Buy", other[100:102])))  # blocked domain
    pages.append(("https://copy.example.org/x", html_page("Copy", [long[0].split("\n\n")[1]])))
    pages.append(("https://news1.example.org/a/1?ref=mirror", pages[1][1]))  # same page, another URL
    (tmp_path / "warc").mkdir()
    for k in range(3):
        write_warc(tmp_path / "warc" / f"crawl-{k}.warc.gz", pages[k::3])
    leaked = long[5].split("\n\n")[1]
    (tmp_path / "eval.jsonl").write_text(json.dumps({"question": leaked, "answer": "A"}) + "\n")
    train_tokenizer(corpus[:300], 1024, tmp_path / "tok")

    spec = yaml.safe_load((ROOT / "configs/data/demo.yaml").read_text())
    spec["work_dir"], spec["output_dir"] = str(tmp_path / "work"), str(tmp_path / "docs")
    spec["inputs"][0]["limit"] = 600
    spec["inputs"][1]["paths"] = [str(tmp_path / "warc" / "*.warc.gz")]
    spec["steps"][-1]["files"] = [str(tmp_path / "eval.jsonl")]
    spec["tokenize"] = {"tokenizer": str(tmp_path / "tok"), "out_dir": str(tmp_path / "tokens"),
                        "val_fraction": 0.01}
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(spec))
    run = subprocess.run([sys.executable, "-m", "mai.cli", "data", "run", str(tmp_path / "demo.yaml")],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "kept" in run.stdout and "removed by exact_dedup" in run.stdout

    report = json.loads((tmp_path / "work" / "report.json").read_text())
    d = report["documents"]
    assert d["input"] == d["kept"] + d["removed"] + d["failed"] and d["failed"] == 0
    assert report["sources"]["web"]["input"] == 33 + 3  # 33 HTML pages + one PNG per file
    removed = report["removed_by_step"]
    assert removed["url_filter"] == {"blocked_domain": 1}
    assert removed["read"] == {"not-html": 3}
    assert removed["exact_dedup"] == {"exact_duplicate": 1}  # the same page under a second URL
    assert sum(removed["decontam"].values()) >= 1
    assert report["sources"]["web"]["kept"] >= 25 and report["sources"]["wiki"]["kept"] >= 250

    tok = load_tokenizer(tmp_path / "tok")
    web, wiki = TokenDataset(tmp_path / "tokens" / "web"), TokenDataset(tmp_path / "tokens" / "wiki")
    web_val = TokenDataset(tmp_path / "tokens" / "web", "val")
    assert web.n_docs + web_val.n_docs == report["sources"]["web"]["kept"]
    assert wiki.vocab_size == tok.vocab_size and wiki.eos_id == tok.eos_id
    assert TokenDataset(tmp_path / "tokens" / "wiki", "val").n_docs >= 1  # `mai train` validates on it
    sampler = MixtureSampler([(web, 0.7), (wiki, 0.3)], seq_len=32, batch_size=50, seed=0)
    for _ in range(8):
        x, y = sampler.next_batch()
        assert x.shape == (50, 32) and int(x.max()) < tok.vocab_size
    served = sampler.state_dict()["served"]
    assert 0.6 < served[0] / sum(served) < 0.8  # web 0.7, wiki 0.3
