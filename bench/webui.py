"""Chat page benchmark (issue 14): the weight of a first load (bytes transferred: response headers and bodies, as
Chromium's network layer counted them, per file) and the time to first paint and first contentful paint (the
Performance API's ``paint`` entries), in headless Chromium against a real ``interns1 serve`` on loopback, repeated
with a fresh browser context each time (empty cache and storage).

    python bench/webui.py                 # 5 loads; the tiny synthetic model (the page does not depend on it)
    python bench/webui.py --repeats 10

Needs Playwright (``pip install playwright``) and Debian's Chromium (``apt-get install chromium``; another path with
--chromium). The model is built in a temporary folder (a few seconds).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_fixture import serving  # noqa: E402

from interns1_local.converters.convert import ConvertOptions, convert  # noqa: E402
from interns1_local.synth import write_checkpoint  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def one_load(browser, url: str) -> dict:
    """One first load in a fresh context: bytes per file, and the paint times (ms after navigation start)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    responses = []
    page.on("requestfinished", lambda request: responses.append(request))
    page.goto(url, wait_until="load")
    page.locator("#context", has_text="context").wait_for()  # the header filled from /webui/info: the page works
    paints = page.evaluate("""() => Object.fromEntries(performance.getEntriesByType('paint')
                                      .map(e => [e.name, e.startTime]))""")
    timing = page.evaluate("() => performance.getEntriesByType('navigation')[0].toJSON()")
    files = {}
    for request in responses:
        sizes = request.sizes()
        files[request.url.removeprefix(url.rstrip("/"))] = sizes["responseHeadersSize"] + sizes["responseBodySize"]
    context.close()
    return {"bytes": sum(files.values()), "files": files, "first_paint_ms": paints.get("first-paint"),
            "first_contentful_paint_ms": paints.get("first-contentful-paint"),
            "dom_content_loaded_ms": timing["domContentLoadedEventEnd"], "load_ms": timing["loadEventEnd"]}


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1), "max": round(max(values), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench-webui-") as tmp:
        ckpt = write_checkpoint(Path(tmp) / "Intern-S1-mini-tiny", model="mini", size="tiny")
        model = convert(ckpt, Path(tmp) / "gguf", ConvertOptions("f16", "f16")).model.path
        with serving(model.parent, "--ctx-size", "2048") as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            started = time.perf_counter()
            loads = [one_load(browser, url + "/") for _ in range(args.repeats)]
            browser.close()
    result = {
        "command": "python bench/webui.py" + (f" --repeats {args.repeats}" if args.repeats != 5 else ""),
        "argv": shlex.join(sys.argv), "chromium": args.chromium, "repeats": args.repeats,
        "first_load_bytes": summary([x["bytes"] for x in loads]),
        "files_bytes": loads[-1]["files"],
        **{k: summary([x[k] for x in loads]) for k in ("first_paint_ms", "first_contentful_paint_ms",
                                                       "dom_content_loaded_ms", "load_ms")},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
