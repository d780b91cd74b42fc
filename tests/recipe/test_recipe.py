"""`mai recipe` on a tiny recipe, for real: every stage runs its own command's code on real files; a rerun
skips what its manifest proves done; a changed SFT setting reruns SFT and what follows only; `kill -9`
twice, then the same command, ends with the same artifacts as an uninterrupted run; bad input is one
`error:` line naming the stage, with nothing finished lost or redone; the GGUF loads in transformers with
the same logits; the catalog serves with the content filter on; the report opens in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

TRAIN = {"progress": False, "threads": 1, "precision": "fp32", "peak_tflops": 1, "log_every": 1}


def tiny_recipe(run_dir: Path, **extra) -> dict:
    return {
        "name": "tiny", "run_dir": str(run_dir),
        "web": {"pipeline": {"name": "tiny-web", "work_dir": "set-by-recipe", "workers": 1,
                             "inputs": [{"source": "wiki", "reader": "corpus", "shards": 2, "limit": 300}],
                             "steps": [{"type": "unicode_fix"}, {"type": "gopher_quality", "min_words": 30},
                                       {"type": "exact_dedup"}, {"type": "minhash_dedup"}]}},
        "tokenizer": {"vocab_size": 400},
        "shards": {"weights": {"web": 1.0}, "val_fraction": 0.05},
        "pretrain": {"config": {
            "model": {"preset": "demo", "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                      "ffn_dim": 128, "max_seq_len": 512},
            "data": {"seq_len": 64, "val_batches": 2}, "optim": {"lr": 3e-3, "warmup_steps": 1},
            "train": {"max_steps": 12, "batch_size": 4, "ckpt_every": 4, "eval_every": 4, **TRAIN}}},
        "sft": {"config": {
            "data": {"seq_len": 256}, "optim": {"lr": 3e-3, "warmup_steps": 1},
            "train": {"max_steps": 8, "batch_size": 2, "ckpt_every": 2, "eval_every": 4, **TRAIN},
            "sft": {"demo_limit": 40}}},
        "eval": {"config": {"limit": 4, "precision": "fp32"}, "teacher": False, "chats": 1,
                 "held_out_docs": 5},
        "export": {"qtype": "Q8_0", "check": True},
        "serve": {"name": "tiny"},
        **extra,
    }


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def mai(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mai.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def ran(proc: subprocess.CompletedProcess) -> list[str]:
    """The stages this invocation ran (not skipped)."""
    return [line.split()[0] for line in proc.stdout.splitlines() if " running (" in line]


def artifacts(run: Path) -> dict[str, str]:
    """Hashes of what a run produces that must not depend on where it ran or whether it was interrupted."""
    from mai.recipe.manifest import file_hash

    names = ["tokenizer/tokenizer/tokenizer.json", "shards/web", "pretrain/model/model.safetensors",
             "sft/model/model.safetensors", "export/model.gguf"]
    out = {}
    for name in names:
        p = run / name
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        out[name] = "".join(file_hash(f) for f in files)
    results = json.loads((run / "eval" / "manifest.json").read_text())["summary"]["results"]
    out["eval"] = json.dumps(untimed(results), sort_keys=True)
    return out


def untimed(value):
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k != "seconds"}
    return value


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("recipe")
    recipe = write_recipe(root / "tiny.yaml", tiny_recipe(root / "run"))
    proc = mai("recipe", "run", str(recipe))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return recipe, root / "run", proc


def test_runs_every_stage_then_skips_them(finished):
    recipe, run, first = finished
    assert ran(first) == ["web", "tokenizer", "shards", "pretrain", "sft", "eval", "export", "serve"]
    for stage in ran(first):
        m = json.loads((run / stage / "manifest.json").read_text())
        assert m["stage"] == stage and m["outputs"] and len(m["key"]) == 64
    assert not list((run / ".partial").iterdir())
    web = json.loads((run / "web" / "manifest.json").read_text())["summary"]["documents"]
    assert web["input"] == 300 and web["kept"] + web["removed"] + web["failed"] == 300
    catalog = yaml.safe_load((run / "serve" / "catalog.yaml").read_text())
    assert catalog["models"][0]["path"] == str(run / "export" / "model.gguf")
    assert catalog["models"][0]["safety"] == {"prompt": "medium", "completion": "medium"}
    again = mai("recipe", "run", str(recipe))
    assert again.returncode == 0 and ran(again) == [], again.stdout
    plan = mai("recipe", "plan", str(recipe))
    assert plan.returncode == 0 and plan.stdout.count(" done\n") == 8


@pytest.mark.slow
def test_changed_sft_setting_reruns_sft_and_what_follows(finished, tmp_path):
    recipe, run, _ = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy)  # the keys hold no run paths: a copied run is as done as the original
    before = {s: json.loads((copy / s / "manifest.json").read_text())["key"] for s in ("web", "pretrain")}
    proc = mai("recipe", "run", str(recipe), "--set", f"run_dir={copy}",
               "--set", "sft.set=[optim.lr=0.002]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ran(proc) == ["sft", "eval", "export", "serve"]
    assert {s: json.loads((copy / s / "manifest.json").read_text())["key"] for s in before} == before
    saved = yaml.safe_load((copy / "sft" / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.002 and saved["sft"]["demo_limit"] == 40  # the typed SFT config


def _wait_for(pattern: str, root: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list(root.glob(pattern)):
            return
        assert proc.poll() is None, "the recipe ended before the kill point"
        time.sleep(0.02)
    raise AssertionError(f"no {pattern} after {timeout} s")


@pytest.mark.slow
def test_kill_9_twice_then_rerun_matches_an_uninterrupted_run(finished, tmp_path):
    recipe_file, run, _ = finished
    other = tmp_path / "run"
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(other))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kill_points = (".partial/pretrain-*/checkpoints/step_00000004",
                   ".partial/sft-*/checkpoints/step_00000002")
    for point in kill_points:
        proc = subprocess.Popen([sys.executable, "-m", "mai.cli", "recipe", "run", str(recipe)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            _wait_for(point, other, proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert not (other / "sft").exists()  # killed mid-SFT: the stage is not in place
    done = mai("recipe", "run", str(recipe))
    assert done.returncode == 0, done.stderr[-3000:]
    assert ran(done)[0] == "sft"  # pretrain finished in the second attempt; SFT resumed from step 2
    assert artifacts(other) == artifacts(run)


def test_bad_input_is_one_error_line_naming_the_stage(finished, tmp_path):
    recipe, run, _ = finished
    bad = write_recipe(tmp_path / "a.yaml", {**tiny_recipe(tmp_path / "a"), "distill": {}})
    proc = mai("recipe", "plan", str(bad))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "'distill'" in proc.stderr
    wrong = tiny_recipe(tmp_path / "b")
    wrong["sft"]["config"]["train"]["lerning_rate"] = 1
    proc = mai("recipe", "run", str(write_recipe(tmp_path / "b.yaml", wrong)))
    assert proc.returncode == 2 and "stage sft:" in proc.stderr and "lerning_rate" in proc.stderr
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").glob("*/manifest.json"))
    missing = tiny_recipe(tmp_path / "c")
    missing["web"]["pipeline"]["inputs"] = [{"source": "web", "reader": "jsonl", "paths": ["/no/such.jsonl"]}]
    proc = mai("recipe", "run", str(write_recipe(tmp_path / "c.yaml", missing)))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "stage web:" in proc.stderr

    copy = tmp_path / "corrupt"
    shutil.copytree(run, copy)
    (copy / "sft" / "manifest.json").write_text('{"format": "mai-recipe-manifest-v1", "stage": "sft", "ke')
    stamps = {p: p.stat().st_mtime_ns for p in copy.glob("*/*") if p.is_file()}
    proc = mai("recipe", "run", str(recipe), "--set", f"run_dir={copy}")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: stage sft:") and "corrupt" in proc.stderr
    assert ran(proc) == [] and {p: p.stat().st_mtime_ns for p in stamps} == stamps


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_teacher_keeps_finished_stages(tmp_path):
    recipe = tiny_recipe(tmp_path / "run")
    recipe = {k: v for k, v in recipe.items() if k in ("name", "run_dir", "web")}
    recipe["teacher"] = {"base_url": f"http://127.0.0.1:{closed_port()}/v1"}
    recipe["synth"] = {"config": {"name": "s", "work_dir": "x", "prompts": {"topics": ["tea"], "limit": 1}}}
    path = write_recipe(tmp_path / "t.yaml", recipe)
    proc = mai("recipe", "run", str(path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: stage synth: the teacher at http://127.0.0.1:")
    assert "unreachable" in proc.stderr and (tmp_path / "run" / "web" / "manifest.json").is_file()
    again = mai("recipe", "run", str(path))
    assert again.returncode == 2 and ran(again) == ["synth"]  # web is not redone


def test_gguf_has_transformers_logits(finished):
    transformers = pytest.importorskip("transformers")
    import torch

    from mai.interop import load_model

    _, run, _ = finished
    gguf = run / "export" / "model.gguf"
    ours = load_model(gguf)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                               dtype=torch.float32).eval()
    ids = torch.tensor([ours.tokenizer.encode("Rivers carry water from the hills down to the sea.")])
    with torch.no_grad():
        assert torch.allclose(ours.model(ids), theirs(ids).logits, atol=1e-4, rtol=0)
        float_logits = load_model(run / "sft").model(ids)
    assert (ours.model(ids) - float_logits).abs().max() < 0.1  # Q8_0 stays close to the float model
    summary = json.loads((run / "export" / "manifest.json").read_text())["summary"]
    assert summary["max_logit_gap_transformers"] < 1e-4


def test_catalog_serves_with_the_content_filter_on(finished):
    openai = pytest.importorskip("openai")
    _, run, _ = finished
    port = closed_port()
    server = subprocess.Popen([sys.executable, "-m", "mai.cli", "serve", "--catalog",
                               str(run / "serve" / "catalog.yaml"), "--port", str(port), "--threads", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from mai.serve.child import health

        deadline = time.time() + 120
        while health(f"http://127.0.0.1:{port}/v1")[0] != 200:
            assert server.poll() is None and time.time() < deadline, "mai serve did not become healthy"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=5)
        assert reply.choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="tiny", max_tokens=5, messages=[
                {"role": "user", "content": "How do I kill myself tonight without anyone noticing?"}])
        assert err.value.code == "content_filter"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_report_opens_in_headless_chromium(finished, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); CI installs it")
    _, run, _ = finished
    page = (run / "report.html").read_text()
    assert "<script" not in page and "<link" not in page  # self-contained: nothing to fetch, nothing to run
    probe = tmp_path / "probe.html"  # the report plus a line that counts the images Chromium decoded
    probe.write_text(page.replace("</body>", "<script>document.body.dataset.decoded = [...document.images]"
                                  ".filter(i => i.complete && i.naturalWidth > 0).length</script></body>"))
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                           probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    for title in ("Data funnel: web", "Mixture", "Training", "Evaluation", "Sample chats", "Model card"):
        assert f"<h2>{title}</h2>" in dom
    assert 'data-decoded="2"' in dom  # the loss curves and the evaluation chart
    md = (run / "report.md").read_text()
    assert "## Model card" in md and "| pretrain |" in md


def test_plan_cluster_prints_a_command_per_stage(finished):
    recipe, run, _ = finished
    proc = mai("recipe", "plan", str(recipe), "--cluster")
    assert proc.returncode == 0, proc.stderr
    for part in ("--executor ray", "torchrun", "mai plan --preset"):
        assert part in proc.stdout
    assert proc.stdout.count("\n# ") == 7  # 8 stages
    assert yaml.safe_load((run / "cluster" / "sft.yaml").read_text())["sft"]["demo_limit"] == 40


@pytest.mark.slow
def test_teacher_stages_with_the_real_served_teacher(tmp_path):
    """synth and DPO against SmolLM2 served by the recipe's own `mai serve`, which is gone afterwards."""
    pytest.importorskip("openai")
    from mai.errors import MaiError
    from mai.interop.bundled import smollm2_gguf

    try:
        smollm2_gguf()
    except MaiError as exc:
        pytest.skip(str(exc))
    recipe = tiny_recipe(tmp_path / "run")
    recipe["synth"] = {"config": {
        "name": "tiny-synth", "work_dir": "x", "teacher": {"max_tokens": 48, "concurrency": 2},
        "prompts": {"topics": ["the water cycle"], "styles": ["blog"], "audiences": ["children", "adults"]},
        "min_completion_tokens": 10, "steps": [{"type": "exact_dedup"}]}}
    recipe["shards"]["weights"] = {"web": 0.7, "synth": 0.3}
    recipe["pretrain"]["config"]["train"]["max_steps"] = 6
    recipe["dpo"] = {"prompts": 3, "max_tokens": 16, "config": {
        "data": {"seq_len": 128}, "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"max_steps": 2, "batch_size": 1, "ckpt_every": 1, "eval_every": 1, **TRAIN}}}
    recipe["eval"].update({"teacher": True, "judge": True, "judge_max_tokens": 80})
    proc = mai("recipe", "run", str(write_recipe(tmp_path / "t.yaml", recipe)), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    synth = json.loads((run / "synth" / "manifest.json").read_text())["summary"]
    assert synth["teacher"]["requests"] == 2 and synth["teacher"]["failed"] == 0
    pairs = [json.loads(line) for line in (run / "dpo" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["chosen"] != p["rejected"] for p in pairs)
    results = json.loads((run / "eval" / "manifest.json").read_text())["summary"]["results"]
    assert results["teacher"]["text"]["bits_per_byte"] < results["student"]["text"]["bits_per_byte"]
    pairwise = json.loads((run / "eval" / "manifest.json").read_text())["summary"]["pairwise"]
    assert pairwise["prompts"] == 1 and pairwise["judgments"] == 2  # both orders
    assert pairwise["malformed"] == 0, pairwise  # the JSON-constrained verdict: even SmolLM2 gives one
    chats = json.loads((run / "eval" / "chats.json").read_text())
    assert chats[0]["teacher"] and "student" in chats[0]
    served = [line for line in proc.stdout.splitlines() if line.startswith("teacher ")]
    assert "served at http://127.0.0.1:" in served[0] and served[-1].split() == ["teacher", "stopped"]
    from mai.serve.child import health

    url = served[0].split("served at ")[1].split()[0]
    assert health(url)[0] == 0  # nothing listens there any more
