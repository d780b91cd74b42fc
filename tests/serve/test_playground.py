"""The playground page at GET /, driven end to end in headless Chromium over the DevTools protocol:
the page lists the models, a message is typed and sent, and a streamed answer appears."""

import json
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
    assert "https://" not in page and "<link" not in page and " src=" not in page


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


def test_chat_in_headless_chromium_streams_an_answer(tab):
    # the test server requires API keys: the page says so, then lists the models once a key is given
    error = tab.wait_for("(document.querySelector('.msg.error') || {}).textContent", 60)
    assert "Could not list models" in error and "API key" in error, error
    tab.js("const k = document.getElementById('key'); k.value = 'sk-test';"
           " k.dispatchEvent(new Event('change'))")
    models = tab.wait_for("document.readyState === 'complete' && document.getElementById('model')"
                          ".options.length ? [...document.getElementById('model').options].map(o => o.value)"
                          " : null", 60)
    assert models == ["smol", "smol-strict"]
    tab.js("document.getElementById('clear').click(); document.getElementById('max_tokens').value = '24';"
           " document.getElementById('temperature').value = '0'; document.getElementById('input').focus()")
    tab.call("Input.insertText", text="What is the capital of France?")
    assert tab.js("document.getElementById('input').value") == "What is the capital of France?"
    tab.call("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter", windowsVirtualKeyCode=13)
    tab.call("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter", windowsVirtualKeyCode=13)
    lengths = set()  # the answer's length as seen while it streams in
    deadline = time.time() + 240
    state = None
    while time.time() < deadline and state not in ("done", "error"):
        state, text = tab.js("(() => { const a = document.querySelector('.msg.assistant, .msg.error');"
                             " return a ? [a.dataset.state, a.firstChild ? a.firstChild.textContent : ''] :"
                             " [null, '']; })()")
        lengths.add(len(text))
        time.sleep(0.05)
    assert state == "done", tab.js("document.getElementById('log').innerText")
    answer = tab.js("document.querySelector('.msg.assistant').firstChild.textContent")
    meta = tab.js("document.querySelector('.msg.assistant .meta').textContent")
    assert "Paris" in answer, answer
    chunks = int(meta.split(" chunks")[0])
    assert chunks > 1 and "finish_reason" in meta, meta  # the answer came as several SSE deltas
    assert tab.js("document.querySelector('.msg.user').textContent") == "What is the capital of France?"
