"""The playground page at GET /, driven end to end in headless Chromium over the DevTools protocol against
the real SmolLM2 server: the page lists the models once given the key, a typed message streams an answer
with its timings, conversations (renamed, added, deleted) survive a reload, Stop aborts the request and
the server cancels it (its Prometheus counters say so), markdown renders code blocks as <pre><code> from
escaped text, and the JSON-schema and tools modes put their fields in the request."""

import json
import re
import shutil
import subprocess
import time

import pytest

from .conftest import http_client

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_page_is_self_contained(server_url):
    res = http_client().get(f"{server_url}/")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/html")
    page = res.text
    assert "/v1/chat/completions" in page and "getReader" in page
    assert "http://" not in page.split("<!--", 1)[0] + page.split("-->", 1)[1]  # nothing fetched elsewhere
    assert "https://" not in page and "<link" not in page and " src=" not in page and "@import" not in page


class Tab:
    """One page of a headless Chromium, spoken to over the DevTools websocket."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 240.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")

    def reload(self) -> None:
        self.js("window.__before_reload = true")
        self.call("Page.reload", ignoreCache=True)
        self.wait_for("!window.__before_reload && document.readyState === 'complete'", 60)

    def type_and_send(self, text: str) -> None:
        self.js("document.getElementById('input').focus()")
        self.call("Input.insertText", text=text)
        assert self.js("document.getElementById('input').value") == text
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter",
                      windowsVirtualKeyCode=13)

    def set(self, element_id: str, value: str) -> None:
        """Set a field as a user would: the value, then its change event (which the page saves)."""
        self.js(f"(() => {{ const e = document.getElementById({json.dumps(element_id)});"
                f" e.value = {json.dumps(value)}; e.dispatchEvent(new Event('change')); }})()")

    def models(self) -> list[str]:
        return self.wait_for("(() => { const s = document.getElementById('model');"
                             " return document.readyState === 'complete' && s && s.options.length ?"
                             " [...s.options].map(o => o.value) : null; })()", 60)

    def conversations(self) -> list[str]:
        return self.js("[...document.querySelectorAll('#conv-list .conv-title')].map(e => e.textContent)")


@pytest.fixture
def tab(server_url, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); CI installs it")
    pytest.importorskip("websocket", reason="the test speaks DevTools through websocket-client (mai[dev])")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-port=0", f"{server_url}/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
            if "DevTools listening on" in line:
                port = line.split("ws://", 1)[1].split("/", 1)[0]
                break
        else:
            pytest.fail("chromium exited before opening its DevTools port")
        httpx = http_client()
        deadline = time.time() + 60
        pages = []
        while not pages and time.time() < deadline:
            pages = [t for t in httpx.get(f"http://{port}/json/list").json()
                     if t["type"] == "page" and t["url"].startswith(server_url)]
            time.sleep(0.2)
        assert pages, "the playground page did not open"
        t = Tab(pages[0]["webSocketDebuggerUrl"])
        yield t
        t.ws.close()
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def ready(tab):
    """The page with the test server's key given: it first says a key is needed, then lists the models."""
    error = tab.wait_for("(() => { const info = document.getElementById('model-info');"
                         " return info && info.className === 'error' && info.textContent; })()", 60)
    assert "Could not list models" in error and "API key" in error, error
    tab.set("key", "sk-test")
    assert tab.models() == ["smol", "smol-strict"]
    assert "context 512 tokens" in tab.js("document.getElementById('model-info').textContent")
    return tab


def last_answer(tab):
    return tab.js("(() => { const a = [...document.querySelectorAll('.msg.assistant, .msg.error')].pop();"
                  " if (!a) return [null, '']; const body = a.querySelector('.body');"
                  " return [a.dataset.state, (body || a).textContent]; })()")


def test_a_streamed_answer_and_conversations_that_survive_a_reload(ready):
    tab = ready
    tab.set("max_tokens", "24")
    tab.set("temperature", "0")
    tab.type_and_send("What is the capital of France?")
    lengths = set()  # the answer's length as seen while it streams in
    deadline = time.time() + 240
    state = None
    while time.time() < deadline and state not in ("done", "error"):
        state, text = last_answer(tab)
        lengths.add(len(text))
        time.sleep(0.05)
    assert state == "done", tab.js("document.getElementById('log').innerText")
    answer = last_answer(tab)[1]
    assert "Paris" in answer, answer
    assert len(lengths - {0}) > 1, lengths  # it grew in several steps: streamed
    meta = tab.js("document.querySelector('.msg.assistant .meta').textContent")
    timings = r"\d+ tokens · TTFT \d+\.\d\d s · \d+\.\d tokens/s · finish_reason (stop|length)"
    assert re.search(timings, meta), meta
    assert tab.js("document.querySelector('.msg.user').textContent") == "What is the capital of France?"
    assert tab.conversations() == ["What is the capital of France?"]  # titled by its first message

    tab.js("document.querySelector('#conv-list li.active .rename').click()")
    tab.js("const r = document.querySelector('.rename-input'); r.value = 'Geography';"
           " r.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'}))")
    tab.js("document.getElementById('new').click()")
    tab.type_and_send("Say hi")
    tab.wait_for("document.querySelectorAll('.msg.assistant').length === 1 &&"
                 " document.querySelector('.msg.assistant').dataset.state === 'done'")
    tab.js("document.getElementById('new').click()")  # a third, empty one, deleted below
    assert tab.conversations() == ["New chat", "Say hi", "Geography"]

    tab.reload()
    assert tab.models() == ["smol", "smol-strict"]  # the key came back from sessionStorage
    assert tab.js("document.getElementById('max_tokens').value") == "24"  # so did the settings
    assert tab.conversations() == ["New chat", "Say hi", "Geography"]
    tab.js("document.querySelector('#conv-list li.active .delete').click()")
    assert tab.conversations() == ["Say hi", "Geography"]
    tab.js("[...document.querySelectorAll('#conv-list .conv-title')].find(e => e.textContent === 'Geography')"
           ".click()")
    shown = tab.js("[...document.querySelectorAll('.msg')].map(m => m.className)")
    assert shown == ["msg user", "msg assistant"]
    assert last_answer(tab) == ["done", answer]
    assert tab.js("document.querySelector('.msg.assistant .meta').textContent") == meta
    tab.reload()
    assert tab.conversations() == ["Say hi", "Geography"]


def _metric(server_url: str, name: str, **labels: str) -> float:
    text = http_client().get(f"{server_url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_stop_aborts_and_the_server_cancels(ready, server_url):
    tab = ready
    cancelled = _metric(server_url, "mai_requests_total", model="smol", finish_reason="cancelled")
    tab.set("max_tokens", "256")
    tab.set("temperature", "0.7")
    tab.type_and_send("Write a long story about a dragon who learns to bake bread.")
    tab.wait_for("(() => { const a = document.querySelector('.msg.assistant');"
                 " return a && a.dataset.state === 'streaming' && a.textContent.length > 10; })()")
    assert tab.js("getComputedStyle(document.getElementById('stop')).display") != "none"
    tab.js("document.getElementById('stop').click()")
    tab.wait_for("document.querySelector('.msg.assistant').dataset.state === 'stopped'", 30)
    deadline = time.time() + 60
    while time.time() < deadline and _metric(server_url, "mai_requests_total", model="smol",
                                             finish_reason="cancelled") == cancelled:
        time.sleep(0.1)
    assert _metric(server_url, "mai_requests_total", model="smol", finish_reason="cancelled") == cancelled + 1
    assert _metric(server_url, "mai_num_requests_running", model="smol") == 0
    meta = tab.js("document.querySelector('.msg.assistant .meta').textContent")
    assert "stopped" in meta and "TTFT" in meta, meta
    assert tab.js("getComputedStyle(document.getElementById('send')).display") != "none"


MARKDOWN = ("# Title\nSome **bold** and `inline` code, a [link](javascript:alert(1)) and <img src=x onerror="
            "'window.pwned=1'>.\n\n```python\ndef f(x):\n    return x < 1 and '<b>'\n```\n\n- one\n- two\n")


def test_markdown_renders_code_blocks_from_escaped_text(ready):
    tab = ready
    conversation = {"id": "md", "title": "Markdown", "system": "", "messages": [
        {"role": "user", "content": "<i>show</i> me"},
        {"role": "assistant", "content": MARKDOWN, "state": "done", "meta": "1 tokens"}]}
    tab.js(f"localStorage.setItem('mai.playground.conversations', JSON.stringify("
           f"{{conversations: [{json.dumps(conversation)}], current: 'md'}}))")
    tab.reload()
    body = "document.querySelector('.msg.assistant .body')"
    code = tab.wait_for(f"{body} && {body}.querySelector('pre > code.language-python').textContent")
    assert code == "def f(x):\n    return x < 1 and '<b>'"
    assert tab.js(f"{body}.querySelector('h1').textContent") == "Title"
    assert tab.js(f"{body}.querySelector('strong').textContent") == "bold"
    assert tab.js(f"[...{body}.querySelectorAll('li')].map(li => li.textContent)") == ["one", "two"]
    assert tab.js(f"{body}.querySelectorAll('img, a, script, b').length") == 0  # text, not markup
    assert "<img src=x" in tab.js(f"{body}.textContent")
    assert tab.js("document.querySelector('.msg.user').textContent") == "<i>show</i> me"
    assert not tab.js("window.pwned")


def test_json_schema_and_tools_modes_send_their_fields(ready):
    tab = ready
    tab.set("mode", "json")
    assert tab.js("document.getElementById('json-box').hidden") is False
    body = tab.js("requestBody(current())")
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["answer", "confidence"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    tab.set("mode", "tools")
    body = tab.js("requestBody(current())")
    assert "response_format" not in body and body["tools"][0]["function"]["name"] == "get_weather"
    tab.set("tools", "{not json")
    tab.type_and_send("What is the weather in Paris?")
    error = tab.wait_for("(document.querySelector('.msg.error') || {}).textContent", 30)
    assert "Tools: not valid JSON" in error, error
    assert tab.js("document.getElementById('input').value") == "What is the weather in Paris?"  # given back


def test_tools_mode_shows_the_streamed_call_and_sends_its_result_back(ready):
    tab = ready
    tab.set("max_tokens", "60")
    tab.set("temperature", "0")
    tab.set("mode", "tools")
    tab.set("tool_choice", "required")  # the server's grammar makes the model call a tool
    tab.type_and_send("What is the weather in Paris?")
    tab.wait_for("(() => { const a = document.querySelector('.msg.assistant');"
                 " return a && a.dataset.state !== 'streaming'; })()")
    assert last_answer(tab)[0] == "done", tab.js("document.getElementById('log').innerText")
    call = tab.js("document.querySelector('.msg.assistant .call').textContent")
    assert "get_weather" in call and "call_" in call, call
    args = json.loads(tab.js("document.querySelector('.msg.assistant .call pre code').textContent"))
    assert list(args) == ["city"], args
    assert "finish_reason tool_calls" in tab.js("document.querySelector('.msg.assistant .meta').textContent")
    tab.set("tool_choice", "none")
    tab.js("document.querySelector('.call textarea').value = '{\"temperature_c\": 18, \"sky\": \"sunny\"}';"
           " document.querySelector('.send-result').click()")
    tab.wait_for("document.querySelectorAll('.msg.assistant').length === 2 &&"
                 " document.querySelectorAll('.msg.assistant')[1].dataset.state === 'done'")
    shown = tab.js("[...document.querySelectorAll('.msg')].map(m => m.className)")
    assert shown == ["msg user", "msg assistant", "msg tool", "msg assistant"]
    assert "temperature_c" in tab.js("document.querySelector('.msg.tool').textContent")
    assert not tab.js("document.querySelector('.send-result')")  # the call has its answer
