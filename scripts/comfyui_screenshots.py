"""Screenshots of Luna's graph refiners in ComfyUI's web page (docs/comfyui-*.png), by headless
Chromium driven over its DevTools protocol:

    PY scripts/comfyui_screenshots.py COMFYUI_DIR --home LUNA_HOME [--chromium chromium]

PY: the Python ComfyUI runs in (websockets is one of Luna's dependencies). It starts ComfyUI with
the pack linked, loads each graph of scripts/comfyui_check.py into the page, runs it, and saves the
page once the run's images show.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from comfyui_check import _graphs, _request, prepared  # noqa: E402  (a sibling script)

PORT, DEVTOOLS = 8199, 9333


async def _shoot(page_ws: str, graphs: dict, out: Path) -> None:
    import websockets  # the DevTools protocol speaks over a websocket

    async with websockets.connect(page_ws, max_size=None) as ws:
        counter = 0

        async def call(method: str, **params):
            nonlocal counter
            counter += 1
            await ws.send(json.dumps({"id": counter, "method": method, "params": params}))
            while True:
                message = json.loads(await ws.recv())
                if message.get("id") == counter:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return message.get("result", {})

        async def evaluate(expression: str):
            result = await call(
                "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
            )
            if "exceptionDetails" in result:
                raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
            return result.get("result", {}).get("value")

        await call("Page.navigate", url=f"http://127.0.0.1:{PORT}/")
        while not await evaluate("Boolean(window.app && window.app.graph && window.app.canvas)"):
            await asyncio.sleep(0.5)  # the page's own readiness, asked again until it answers
        for name, graph in graphs.items():
            await evaluate(f"app.loadApiJson({json.dumps(graph)}, 'luna')")
            await evaluate(
                "app.graph.arrange && app.graph.arrange(); app.canvas.setDirty(true,true)"
            )
            await evaluate(
                "(() => { const s = app.graph.nodes.find(n => n.type === 'SaveImage');"
                "const p = app.graph.nodes.find(n => n.type === 'PreviewAny');"
                "s.size = [300, 320]; p.pos = [s.pos[0], s.pos[1] + 370]; p.size = [420, 130];"
                "app.canvas.setDirty(true, true) })()"
            )
            before = len(_request(PORT, "/history"))
            await evaluate("app.queuePrompt(0, 1)")
            while True:  # the run recorded in ComfyUI's history, then its image on the page
                runs = _request(PORT, "/history")
                if len(runs) > before and all(
                    r.get("status", {}).get("completed") is not None for r in runs.values()
                ):
                    break
                await asyncio.sleep(1)
            while not await evaluate(
                "Boolean(app.graph.nodes.find(n => n.type === 'SaveImage' && n.imgs && "
                "n.imgs.length && n.imgs[0].complete))"
            ):
                await asyncio.sleep(0.5)
            await evaluate(
                "app.extensionManager.command.execute('Comfy.Canvas.FitView').catch(() => null)"
            )
            await asyncio.sleep(1)  # one frame drawn after the view moved
            shot = await call("Page.captureScreenshot", format="png")
            path = out / f"comfyui-{name}.png"
            path.write_bytes(base64.b64decode(shot["data"]))
            print(f"saved {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comfyui", type=Path)
    parser.add_argument("--home", required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--chromium", default="chromium")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    comfyui = args.comfyui.resolve()
    with prepared(comfyui, args.checkpoint.resolve(), PORT, sys.executable):
        # the first-run template browser would cover the graph
        _request(PORT, "/settings/Comfy.TutorialCompleted", True)
        profile = tempfile.mkdtemp(prefix="luna-chromium-")
        browser = subprocess.Popen(
            [args.chromium, "--headless", "--no-sandbox", f"--remote-debugging-port={DEVTOOLS}",
             f"--user-data-dir={profile}", "--window-size=1600,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{DEVTOOLS}/json/list") as r:
                        pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
                    if pages:
                        break
                except OSError:
                    pass
                time.sleep(0.5)  # Chromium's DevTools port, asked again until it answers
            graphs = {
                "chess-refiner": _graphs("luna-check.png", args.home)["LunaChessRefiner"],
                "semantic-detailer": _graphs("luna-check.png", args.home)["LunaSemanticDetailer"],
            }
            asyncio.run(_shoot(pages[0]["webSocketDebuggerUrl"], graphs, args.out))
        finally:
            browser.terminate()
            browser.wait()


if __name__ == "__main__":
    main()
