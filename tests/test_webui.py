"""The chat page at `interns1 serve`'s root, in a real Chromium (Debian's `chromium`, driven by Playwright) against a
real server on loopback with the tiny model; and the routes the page uses (/webui/info, /api/depict).

Random weights write gibberish, so where a test needs a particular answer it adds a GBNF `grammar` (the server's
llama.cpp-style extension) or a token limit to the page's own request on its way out (Playwright's `page.route`);
the page knows nothing of this. Screenshots go to $INTERNS1_WEBUI_ARTEFACTS, or else to `test-artefacts/webui/` in
the checkout (pytest removes its own temporary folder after a passing run). Without Chromium or Playwright the
browser tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from importlib import resources
from pathlib import Path

import httpx
import pytest
from serve_fixture import serving
from template_corpus import WEATHER

from interns1_local.synth import write_clip, write_image

CHROMIUM = os.environ.get("INTERNS1_CHROMIUM", "/usr/bin/chromium")
# without the background-networking switches Chromium tries to reach Google's servers at start
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEY = "sesame"
# Nothing but the rdkit package hidden: `import rdkit` raises ImportError in the server, as on an install without
# the `smiles` extra.
WITHOUT_RDKIT = ("-c", "import runpy, sys; sys.modules['rdkit'] = None; "
                       "runpy.run_module('interns1_local', run_name='__main__', alter_sys=True)")
# The answer the rendering test forces: a structure, mathematics, a table, a protein, and HTML that must stay text.
HOSTILE = ('<script>window.__pwned=1</script> <img src=x onerror="window.__pwned=2">')
ANSWER = ("## Ethanol\n\n<SMILES>CCO</SMILES> is drawn, and so is `CC1=CC=CC=C1C=O`; `[Na+].[Cl-]` is not one SMILES "
          "span for the tokenizer's detector. Energy: $E = mc^2$, and\n\n$$\\frac{a}{b} + \\sqrt{x}$$\n\n"
          "| atom | count |\n|---|---:|\n| C | 2 |\n\n<FASTA>MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQ</FASTA>\n\n"
          + HOSTILE + "\n")
# an answer that cannot end early (random weights may pick the end of turn after a few tokens)
LONG = {"type": "json_schema", "json_schema": {"name": "long", "schema": {
    "type": "object", "properties": {"story": {"type": "string", "minLength": 1500}}, "required": ["story"]}}}


def gbnf_literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def exactly(text: str) -> str:
    return f"root ::= {gbnf_literal(text)}"


def _playwright():
    """Playwright's sync API, or a skip (a failure under CI=true) naming what is missing."""
    missing = None
    try:
        from playwright import sync_api
    except ImportError:
        missing, sync_api = "playwright is not installed (pip install playwright)", None
    if not Path(CHROMIUM).exists():
        missing = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set INTERNS1_CHROMIUM)"
    if missing and os.environ.get("CI") == "true":
        pytest.fail(f"{missing}; under CI=true the browser tests must run, not skip")
    if missing:
        pytest.skip(missing)
    return sync_api


@pytest.fixture(scope="module")
def model_dir(converted) -> Path:
    return converted("f16", "f16").model.path.parent


@pytest.fixture(scope="module")
def server(model_dir):
    with serving(model_dir, "--parallel", "2", "--ctx-size", "4096") as url:
        yield url


@pytest.fixture(scope="module")
def locked(model_dir):
    """A server with an API key and no RDKit."""
    with serving(model_dir, "--parallel", "1", "--ctx-size", "2048", "--api-key", KEY, launcher=WITHOUT_RDKIT) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    sync_api = _playwright()
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def artefacts() -> Path:
    folder = Path(os.environ.get("INTERNS1_WEBUI_ARTEFACTS") or Path(__file__).parents[1] / "test-artefacts" / "webui")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser, artefacts, request):
    """A fresh browser context (empty storage) and page; its JavaScript errors fail the test; a screenshot at the end."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    yield tab
    tab.screenshot(path=str(artefacts / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, errors


def force(page, **fields) -> list[dict]:
    """Add ``fields`` to each chat request the page sends; returns the list the sent bodies are recorded in."""
    sent: list[dict] = []

    def handle(route) -> None:
        body = json.loads(route.request.post_data) | fields
        sent.append(body)
        route.continue_(post_data=json.dumps(body))

    page.route("**/v1/chat/completions", handle)
    return sent


def ask(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def wait_done(page, n: int = 1) -> None:
    """Until the n-th answer has finished (its action buttons appear when it no longer streams)."""
    page.locator(".message.assistant").nth(n - 1).locator(".actions").wait_for(timeout=60_000)


def metric(server: str, name: str) -> float:
    text = httpx.get(server + "/metrics", timeout=10).text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name)))


# -- the page's HTTP ------------------------------------------------------------------------------------------------
def test_page_is_served_with_a_strict_policy(server) -> None:
    page = httpx.get(server + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert "connect-src 'self'" in csp and "http" not in csp  # no other origin, for anything
    for name in re.findall(r'(?:src|href)="(/webui/[^"]+)"', page.text):
        assert httpx.get(server + name, timeout=10).status_code == 200, name
    assert httpx.get(server + "/webui/../app.py", timeout=10).status_code == 404
    assert httpx.get(server + "/webui/info", timeout=10).json()["context_length"] == 4096


@pytest.mark.parametrize("name", ["/", "/webui/app.js", "/webui/style.css"])
def test_page_files_are_gzipped_for_clients_that_take_it(server, name) -> None:
    shipped = resources.files("interns1_local.webui").joinpath("index.html" if name == "/" else name.split("/")[-1])
    plain = httpx.get(server + name, headers={"Accept-Encoding": "identity"}, timeout=10)
    assert "content-encoding" not in plain.headers and plain.content == shipped.read_bytes()
    for accept in ("gzip, deflate, br, zstd", "br;q=1.0, gzip;q=0.8"):  # Chromium's header; a weighted one
        packed = httpx.get(server + name, headers={"Accept-Encoding": accept}, timeout=10)
        assert packed.headers["content-encoding"] == "gzip" and packed.headers["vary"] == "Accept-Encoding"
        assert int(packed.headers["content-length"]) < len(plain.content) / 2
        assert packed.content == plain.content  # httpx undid the gzip
    refused = httpx.get(server + name, headers={"Accept-Encoding": "gzip;q=0, br"}, timeout=10)
    assert "content-encoding" not in refused.headers and refused.content == plain.content


def test_no_webui_turns_the_page_off(model_dir) -> None:
    with serving(model_dir, "--parallel", "1", "--ctx-size", "512", "--no-webui") as url:
        assert httpx.get(url + "/", timeout=10).status_code == 404
        assert httpx.get(url + "/webui/app.js", timeout=10).status_code == 404
        assert httpx.get(url + "/api/depict", params={"smiles": "CCO"}, timeout=30).status_code == 200  # an API


def test_depiction_endpoint(server) -> None:
    depict = lambda smiles, **extra: httpx.get(server + "/api/depict", params={"smiles": smiles, **extra},  # noqa: E731
                                               timeout=60)
    ok = depict("CC(=O)Oc1ccccc1C(=O)O")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/svg+xml"
    assert "<svg" in ok.text and "<script" not in ok.text and "default-src 'none'" in ok.headers["content-security-policy"]
    bad = depict("C1CC(")
    assert bad.status_code == 400 and "cannot parse" in bad.json()["error"]
    assert depict("").status_code == 400
    assert depict("C" * 500).status_code == 200  # the limit itself is drawn
    too_long = depict("C" * 501)
    assert too_long.status_code == 413 and "500" in too_long.json()["error"]
    assert depict("[Na+].[Cl-]").status_code == 200  # RDKit reads it...
    assert depict("[Na+].[Cl-]", detect="true").status_code == 400  # ...the tokenizer's detector does not
    assert depict("CC1=CC=CC=C1C=O", detect="true").status_code == 200


def test_without_rdkit_depiction_is_404_and_the_page_is_public(locked) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    missing = httpx.get(locked + "/api/depict", params={"smiles": "CCO"}, headers=auth, timeout=30)
    assert missing.status_code == 404 and "RDKit" in missing.json()["error"] and "pip install" in missing.json()["error"]
    assert httpx.get(locked + "/webui/info", headers=auth, timeout=10).json()["depiction"] is False
    assert httpx.get(locked + "/api/depict", params={"smiles": "CCO"}, timeout=10).status_code == 401
    assert httpx.get(locked + "/", timeout=10).status_code == 200  # the page and its files hold nothing secret
    assert httpx.get(locked + "/webui/app.js", timeout=10).status_code == 200


# -- in the browser -------------------------------------------------------------------------------------------------
def test_send_and_see_the_answer_stream(page, server) -> None:
    sent = force(page, max_tokens=60)
    page.goto(server)
    page.locator("#context", has_text="context 4,096 tokens").wait_for()
    assert page.inner_text("#model") == "intern-s1"
    page.uncheck("#thinking")
    page.fill("#input", "first line")
    page.press("#input", "Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value("#input") == "first line\nsecond line" and not sent  # Shift+Enter: a new line, no send
    page.press("#input", "Enter")
    # text on the page while the stop button still shows: the answer arrives in pieces, not at the end
    page.wait_for_function("""() => { const body = document.querySelector('.message.assistant .body');
                                      return body && body.textContent.length > 0 && !document.getElementById('stop').hidden; }""")
    wait_done(page)
    assert sent[0]["stream"] is True and sent[0]["enable_thinking"] is False
    assert sent[0]["messages"] == [{"role": "user", "content": "first line\nsecond line"}]
    assert page.locator(".message.assistant .body").inner_text().strip()
    stats = page.inner_text(".message.assistant .stats")
    assert re.search(r"60 tokens · [\d.]+ tok/s · prompt \d+", stats), stats


def test_attachments_reach_the_request(page, server, tmp_path) -> None:
    png = write_image(tmp_path / "grad.png")
    sent = force(page, max_tokens=4)
    page.goto(server)
    page.uncheck("#thinking")
    page.set_input_files("#file", str(png))
    page.locator("#attachments img").wait_for()
    ask(page, "What is this?")
    wait_done(page)
    parts = sent[0]["messages"][0]["content"]
    assert parts[-1] == {"type": "text", "text": "What is this?"}
    assert parts[0]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    prompt = int(re.search(r"prompt (\d+)", page.inner_text(".message.assistant .stats")).group(1))
    assert prompt > 256  # the image's 256 positions reached the model
    assert page.locator(".message.user .thumb img").count() == 1

    clip = write_clip(tmp_path / "clip.mp4", frames=10, width=64, height=48).read_bytes()
    page.set_input_files("#file", files=[{"name": "clip.mp4", "mimeType": "video/mp4", "buffer": clip}])
    page.locator("#attachments video").wait_for()
    ask(page, "And this?")
    wait_done(page, 2)
    video = sent[1]["messages"][-1]["content"][0]
    assert video == {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(clip).decode()}}
    prompt = int(re.search(r"prompt (\d+)", page.locator(".message.assistant .stats").nth(1).inner_text()).group(1))
    assert prompt > 256 + 8 * 256  # the image and the video's 8 frames reached the model

    # dropped and pasted files become attachments too
    page.evaluate("""(bytes) => {
        const file = (name) => new File([new Uint8Array(bytes)], name, {type: 'image/png'});
        const drop = new DataTransfer(); drop.items.add(file('dropped.png'));
        document.getElementById('main').dispatchEvent(new DragEvent('drop', {dataTransfer: drop, bubbles: true, cancelable: true}));
        const paste = new DataTransfer(); paste.items.add(file('pasted.png'));
        document.getElementById('input').dispatchEvent(new ClipboardEvent('paste', {clipboardData: paste, bubbles: true, cancelable: true}));
    }""", list(png.read_bytes()))
    page.locator("#attachments .thumb").nth(1).wait_for()
    assert [page.locator("#attachments img").nth(i).get_attribute("alt") for i in range(2)] == ["dropped.png", "pasted.png"]


def test_thinking_folds_the_reasoning(page, server) -> None:
    sent = force(page, max_tokens=12)
    page.goto(server)
    ask(page, "Why?")  # thinking on (the default): this random model never closes </think>, all of it is reasoning
    wait_done(page)
    reasoning = page.locator(".message.assistant details.reasoning")
    assert reasoning.count() == 1 and reasoning.get_attribute("open") is None  # folded
    assert not page.locator(".reasoning-body").is_visible()
    reasoning.locator("summary").click()
    assert page.locator(".reasoning-body").is_visible() and page.inner_text(".reasoning-body").strip()
    page.uncheck("#thinking")
    ask(page, "And now?")
    wait_done(page, 2)
    second = page.locator(".message.assistant").nth(1)
    assert second.locator("details.reasoning").count() == 0 and second.locator(".body").inner_text().strip()
    assert [b["enable_thinking"] for b in sent] == [True, False]


def test_stop_a_long_answer(page, server) -> None:
    force(page, max_tokens=3000, response_format=LONG)
    page.goto(server)
    page.uncheck("#thinking")
    ask(page, "Tell a long story.")
    page.wait_for_function("() => document.querySelector('.message.assistant .body')?.textContent.length > 40")
    page.keyboard.press("Escape")
    page.locator("#stop").wait_for(state="hidden")
    assert "Stopped" in page.inner_text(".message.assistant .stats")
    deadline = time.monotonic() + 30
    while metric(server, "interns1_active_sequences") != 0:  # the server freed the sequence: the request ended
        assert time.monotonic() < deadline, "the stopped request still decodes on the server"
        time.sleep(0.1)
    assert len(page.inner_text(".message.assistant .body")) < 1500  # stopped well before the grammar's end


def test_conversations_survive_a_reload_and_travel_as_json(page, server, tmp_path) -> None:
    force(page, max_tokens=8, enable_thinking=False)
    page.goto(server)
    ask(page, "Remember me")
    wait_done(page)
    answer = page.inner_text(".message.assistant .body")
    page.click("#conversations .rename")
    page.fill("#conversations input", "Chemistry notes")
    page.press("#conversations input", "Enter")
    page.reload()
    page.locator("#conversations .title", has_text="Chemistry notes").wait_for()
    assert page.inner_text(".message.user .body") == "Remember me"
    assert page.inner_text(".message.assistant .body") == answer

    with page.expect_download() as download:
        page.click("#export")
    exported = tmp_path / "export.json"
    download.value.save_as(exported)
    assert json.loads(exported.read_text())["conversations"][0]["title"] == "Chemistry notes"
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#conversations .delete")
    assert page.locator("#conversations li").count() == 0 and page.locator(".message").count() == 0
    page.set_input_files("#import-file", str(exported))
    page.locator("#conversations .title", has_text="Chemistry notes").wait_for()
    assert page.inner_text(".message.assistant .body") == answer


def test_forced_answer_renders_structure_math_table_and_inert_html(page, server, artefacts) -> None:
    force(page, grammar=exactly(ANSWER), max_tokens=600)
    drawings: list[tuple[str, int, str]] = []
    page.on("response", lambda r: drawings.append((r.url, r.status, r.headers.get("content-type", "")))
            if "/api/depict" in r.url else None)
    page.goto(server)
    page.uncheck("#thinking")
    ask(page, "Describe ethanol.")
    wait_done(page)
    body = page.locator(".message.assistant .body")
    page.locator("img.structure").nth(1).wait_for()
    # structures: the <SMILES> span and the code span the detector accepts, as SVG from our endpoint, through <img>
    assert body.locator("img.structure").count() == 2
    assert all(w > 0 for w in body.locator("img.structure").evaluate_all("imgs => imgs.map(i => i.naturalWidth)"))
    assert sorted((s, t) for _, s, t in drawings if t.startswith("image/")) == [(200, "image/svg+xml")] * 2
    assert body.locator("code", has_text="[Na+].[Cl-]").count() == 1  # not a SMILES span: stays code
    assert any("detect=true" in u and s == 400 for u, s, _ in drawings)
    # mathematics as MathML; the table as a table; the protein as a numbered block
    assert body.locator("math").count() == 2 and body.locator("math mfrac").count() == 1
    assert body.locator("math msup").count() == 1 and body.locator("math msqrt").count() == 1
    assert body.locator("table th").all_inner_texts() == ["atom", "count"]
    assert body.locator("table td").all_inner_texts() == ["C", "2"]
    assert body.locator(".protein .protein-pos").all_inner_texts() == ["1", "51"]
    # the HTML in the answer is text on the page, and nothing of it ran
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert HOSTILE in body.inner_text()
    assert page.locator("#messages script").count() == 0 and page.locator("#messages img[src='x']").count() == 0
    # and had something slipped through, the policy would still refuse inline script
    page.evaluate("document.body.append(Object.assign(document.createElement('script'), {textContent: 'window.__csp = 1'}))")
    assert page.evaluate("typeof window.__csp") == "undefined"
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the list slides away, the menu brings it back
    page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().right <= 0")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(artefacts / "forced-answer-phone.png"))
    page.click("#menu")
    page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().left >= 0")


def test_api_key_is_asked_once_and_molecules_fall_back_to_text(page, locked) -> None:
    force(page, grammar=exactly("<SMILES>CCO</SMILES>"), max_tokens=20, enable_thinking=False)
    page.goto(locked)
    page.locator("#key-dialog[open]").wait_for()
    page.fill("#key-input", KEY)
    page.click("#key-ok")
    page.locator("#context", has_text="context 2,048 tokens").wait_for()
    ask(page, "Draw ethanol.")
    wait_done(page)
    text = page.locator(".message.assistant code.smiles")
    assert text.inner_text() == "CCO" and page.locator("img.structure").count() == 0
    _playwright().expect(text).to_have_attribute("title", re.compile("RDKit"))  # says why: RDKit is not installed
    page.reload()
    page.locator("#context", has_text="context 2,048 tokens").wait_for()
    assert page.locator("#key-dialog[open]").count() == 0  # the key was kept


def test_tool_calls_show_with_their_arguments(page, server) -> None:
    # random weights never choose a tool: a grammar makes the model write InternLM's call block (tags as the special
    # tokens a real model emits), which the server turns into a tool call
    call_block = '<|action_start|><|plugin|>\n{"name": "get_weather", "parameters": {"city": "Paris"}}<|action_end|>'
    sent = force(page, tools=[WEATHER], grammar=exactly(call_block), max_tokens=80, enable_thinking=False)
    page.goto(server)
    ask(page, "What's the weather in Paris?")
    wait_done(page)
    call = page.locator(".message.assistant details.tool")
    assert call.count() == 1 and call.get_attribute("open") is not None
    assert call.locator("summary").inner_text() == "Tool call: get_weather"
    assert call.locator("code").inner_text() == '{\n  "city": "Paris"\n}'  # the arguments, as indented JSON
    assert "action_start" not in page.inner_text(".message.assistant")  # the block became a call, not text
    assert sent[0]["tools"] == [WEATHER]


def test_copy_buttons_put_the_code_and_the_answer_on_the_clipboard(page, server) -> None:
    answer = "Run this:\n\n```python\nprint(\"H2O\")\n```\n"
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server)
    force(page, grammar=exactly(answer), max_tokens=60, enable_thinking=False)
    page.goto(server)
    ask(page, "Some code?")
    wait_done(page)
    block = page.locator(".message.assistant .codeblock")
    assert block.locator(".codebar span").inner_text() == "python"
    for button, expected in ((block.locator("button.copy"), 'print("H2O")'),
                             (page.locator(".message.assistant button.copy-answer"), answer)):
        page.evaluate("navigator.clipboard.writeText('')")
        button.click()
        button.filter(has_text="Copied").wait_for()  # the write is asynchronous; the label says when it is done
        assert page.evaluate("navigator.clipboard.readText()") == expected
        page.wait_for_function("(b) => b.textContent === 'Copy'", arg=button.element_handle())  # and back


def test_regenerate_asks_again_and_replaces_the_answer(page, server) -> None:
    sent = force(page, max_tokens=6, enable_thinking=False)
    page.goto(server)
    ask(page, "Hello")
    wait_done(page)
    page.click(".message.assistant .regenerate")
    wait_done(page)
    assert len(sent) == 2 and sent[1]["messages"] == sent[0]["messages"] == [{"role": "user", "content": "Hello"}]
    assert page.locator(".message.assistant").count() == 1 and page.locator(".message.user").count() == 1
    assert page.inner_text(".message.assistant .stats").startswith("6 tokens")


def _luminance(css_colour: str) -> float:
    r, g, b = (int(v) / 255 for v in re.findall(r"\d+", css_colour)[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_dark_and_light_follow_the_system(page, server) -> None:
    colours = "[getComputedStyle(document.body).backgroundColor, getComputedStyle(document.body).color]"
    page.emulate_media(color_scheme="light")
    page.goto(server)
    background, text = page.evaluate(colours)
    assert _luminance(background) > 0.9 and _luminance(text) < 0.2, (background, text)
    page.emulate_media(color_scheme="dark")
    background, text = page.evaluate(colours)
    assert _luminance(background) < 0.1 and _luminance(text) > 0.8, (background, text)
    assert page.evaluate("getComputedStyle(document.getElementById('input')).colorScheme").startswith("light dark")
