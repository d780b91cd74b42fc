"""`mai eval --judge URL`: two answer sets judged pairwise by a judge at an OpenAI-compatible URL.

The judges are real HTTP servers on 127.0.0.1: the official `mai serve` app serving the tiny random model
(its verdicts are noise, so the test checks the mechanics: every judgment of both orders accounted for,
saved, and repeated by the saved config), and a small server written here that answers in the OpenAI shape
with verdicts chosen per prompt — malformed ones on purpose — so the counts and the win rate are known.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tests.eval.test_cli_eval import mai
from tests.eval.test_pairwise import BAD, GOOD, PROMPTS


@pytest.fixture(scope="module")
def tiny_judge_url(tiny_dir):
    pytest.importorskip("uvicorn")
    from mai.serve.catalog import Catalog, ModelEntry, SafetyConfig
    from tests.serve.conftest import serve_in_thread

    catalog = Catalog(models=[ModelEntry("tiny-judge", str(tiny_dir), max_batch=4, max_seq_len=512,
                                         safety=SafetyConfig(classifier="off"))])
    yield from serve_in_thread(catalog)


@pytest.fixture
def answer_files(tmp_path):
    prompts, good, bad = tmp_path / "prompts.jsonl", tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    good.write_text("".join(json.dumps({"prompt": p, "answer": x}) + "\n"
                            for p, x in zip(PROMPTS, GOOD, strict=True)))
    bad.write_text("".join(json.dumps({"answer": x}) + "\n" for x in BAD))
    return prompts, good, bad


def in_process(capsys, *args: str) -> tuple[int, str, str]:
    """`mai ARGS` through the CLI's own entry point in this process (no interpreter start-up): exit code,
    stdout, stderr. An error that is not a user error would raise here, as a traceback would there."""
    from mai.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows(out) -> list[dict]:
    """The judgments of OUT/judgments.jsonl (its first line is the judge's settings)."""
    return [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()[1:]]


def test_judge_url_of_a_running_mai_serve(tiny_dir, tiny_judge_url, answer_files, tmp_path, capsys):
    prompts, _, bad = answer_files
    out = tmp_path / "out"
    proc = mai("eval", "--judge", f"{tiny_judge_url}/v1#tiny-judge", "--a", str(tiny_dir), "--b", str(bad),
               "--prompts", str(prompts), "--max-new-tokens", "8", "--judge-max-tokens", "8",
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "results.json").read_text())["judge"]
    assert report["judge_model"] == "tiny-judge" and report["a"] == str(tiny_dir)
    assert report["judgments"] == 6 and report["wins"] + report["losses"] + report["ties"] + \
        report["malformed"] == 6
    got = rows(out)
    assert sorted((r["prompt_index"], r["order"]) for r in got) == [(i, o) for i in range(3) for o in (0, 1)]
    assert all(r["reply"] for r in got)  # the served judge answered every call
    assert {r["answer_b"] for r in got} == set(BAD) and all(r["answer_a"] != r["answer_b"] for r in got)
    assert "win rate of A (ties count half)" in proc.stdout and "judgments.jsonl" in proc.stdout
    saved = yaml.safe_load((out / "config.yaml").read_text())["judge"]
    assert saved["model"] == f"{tiny_judge_url}/v1#tiny-judge" and saved["max_tokens"] == 8

    # the saved config repeats the run; a URL without #MODEL asks the server for its only model
    code, _, err = in_process(capsys, "eval", "--config", str(out / "config.yaml"), "--set",
                              f"out={tmp_path / 'again'}", "--set", f"judge.model={tiny_judge_url}/v1")
    assert code == 0, err
    assert [r["reply"] for r in rows(tmp_path / "again")] == [r["reply"] for r in got]


class GarbageJudge(BaseHTTPRequestHandler):
    """An OpenAI-shaped judge named "garbage": no verdict for the first prompt, contradictory ones for the
    second (but the first such request fails with HTTP 400), and for the third always the position holding
    GOOD's answer (so A wins both orders)."""

    chat_requests = 0
    fail_next_colour = True

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "garbage", "object": "model", "created": 0,
                                                         "owned_by": "test"}]})
        else:
            self._send(404, {"error": {"message": "no such page", "type": "not_found", "code": None}})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["model"] != "garbage":
            self._send(404, {"error": {"message": f"the model '{body['model']}' does not exist",
                                       "type": "not_found_error", "code": "model_not_found"}})
            return
        type(self).chat_requests += 1
        shown = body["messages"][-1]["content"]
        if PROMPTS[1] in shown and type(self).fail_next_colour:
            type(self).fail_next_colour = False
            self._send(400, {"error": {"message": "not now", "type": "invalid_request_error", "code": None}})
            return
        if PROMPTS[0] in shown:
            reply = "Both answers have merit."
        elif PROMPTS[1] in shown:
            reply = "[[1]] no wait, [[2]]"
        else:
            first = re.search(r"\[Answer 1\]\n(.*?)\n\n\[Answer 2\]", shown, re.S).group(1)
            reply = "[[1]]" if first == GOOD[2] else "The second. [[2]]"
        self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "garbage",
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": reply}}]})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def garbage_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), GarbageJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_malformed_verdicts_are_counted_named_and_kept(garbage_url, answer_files, tmp_path, capsys):
    prompts, good, bad = answer_files
    args = ["eval", "--judge", garbage_url, "--a", str(good), "--b", str(bad), "--prompts", str(prompts),
            "--out", str(tmp_path / "out")]
    before = GarbageJudge.chat_requests
    code, out, err = in_process(capsys, *args)
    assert code == 0, err
    assert GarbageJudge.chat_requests - before == 6
    report = json.loads((tmp_path / "out" / "results.json").read_text())["judge"]
    assert (report["wins"], report["losses"], report["ties"], report["malformed"]) == (2, 0, 0, 4)
    assert report["win_rate"] == 1.0 and (report["ci_low"], report["ci_high"]) == (1.0, 1.0)
    why = {(m["prompt"], m["order"]): m["why"] for m in report["malformed_judgments"]}
    assert set(why) == {(p, o) for p in (0, 1) for o in ("A first", "B first")}
    assert "no verdict" in why[0, "A first"] and "no verdict" in why[0, "B first"]
    colour = sorted([why[1, "A first"], why[1, "B first"]])  # a failed request, a reply contradicting itself
    assert colour[0].startswith("contradictory verdicts") and \
        colour[1].startswith("the judge request failed: BadRequestError")
    assert "malformed  prompt 0 (A first): no verdict" in out
    assert [r["verdict"] for r in rows(tmp_path / "out")].count(None) == 4

    # run again: every judgment is in judgments.jsonl already (malformed replies too); only the failed
    # request is asked again
    code, out, err = in_process(capsys, *args)
    assert code == 0, err
    assert GarbageJudge.chat_requests - before == 7 and "5 of 6 judgments already in" in out
    again = json.loads((tmp_path / "out" / "results.json").read_text())["judge"]
    assert (again["wins"], again["malformed"]) == (2, 4)
    assert all(m["why"].startswith("contradictory") for m in again["malformed_judgments"] if m["prompt"] == 1)

    # a model the judge does not serve: every request fails → one error line, not a report of failures
    code, _, err = in_process(capsys, "eval", "--judge", f"{garbage_url}#nope", "--a", str(good), "--b",
                              str(bad), "--prompts", str(prompts), "--out", str(tmp_path / "wrong"))
    assert code == 2 and err.startswith(f"error: every request to the judge {garbage_url}#nope failed, "
                                        "e.g. the judge request failed: NotFoundError")


def test_bad_input_is_one_error_line(answer_files, tmp_path, capsys):
    from mai.serve.child import free_port

    prompts, good, bad = answer_files
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    cases = [
        (["--judge", f"{url}#judge", "--a", str(good), "--b", str(bad), "--prompts", str(prompts)],
         f"error: the judge at {url} is unreachable ("),
        (["--judge", "no/such/model", "--a", str(good), "--b", str(bad), "--prompts", str(prompts)],
         "error: judge 'no/such/model' is neither a URL"),
        (["--judge", f"{url}#judge", "--a", str(good)], "error: --judge compares two answer sets"),
    ]
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"prompt": "Hi?"}) + "\n" + json.dumps({"question": "Why?"}) + "\n")
    cases.append((["--judge", f"{url}#judge", "--a", str(good), "--b", str(bad), "--prompts", str(broken)],
                  f"error: {broken}:2: expected a prompt string or an object with a \"prompt\" string"))
    for args, message in cases:
        code, _, err = in_process(capsys, "eval", *args, "--out", str(tmp_path / "out"))
        assert code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1, (args, err)
    # and from the real command line: the same line, exit code 2, no traceback
    proc = mai("eval", *cases[0][0], "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stderr.startswith(cases[0][1]) and "Traceback" not in proc.stderr
