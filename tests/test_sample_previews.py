"""The upload widgets' previews of the pack's shipped samples (``samples/<name>`` in PVTT Load Video / Image).

The frontend asks ComfyUI's ``/view`` for ``type=input&subfolder=samples&filename=<name>``; ComfyUI looks in
``input/samples/`` and answers 404. The pack's middleware answers those requests with the shipped file. A real
ComfyUI check (``COMFYUI_DIR`` set to a comfyrig folder) starts the server and asks /api/view for a sample.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from _comfy_pack import load_pack

pack = load_pack()
previews = importlib.import_module(f"{pack.__name__}.nodes.sample_previews")
paths = importlib.import_module(f"{pack.__name__}.nodes.paths")


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    folder = tmp_path / "input"
    folder.mkdir()
    monkeypatch.setenv("PVTT_INPUT_DIR", str(folder))
    return folder


def test_sample_names_are_listed_and_the_view_query_the_frontend_makes_for_them_finds_the_shipped_file(inputs):
    listed = [n for n in paths.media_names(paths.IMAGE_EXTENSIONS) if n.startswith("samples/")]
    assert "samples/pvtt_product.png" in listed
    for name in listed + [n for n in paths.media_names(paths.VIDEO_EXTENSIONS) if n.startswith("samples/")]:
        leaf = name.split("/", 1)[1]
        expected = (paths.SAMPLES_DIR / leaf).resolve()
        assert previews.sample_for_view({"type": "input", "subfolder": "samples", "filename": leaf}) == expected
        assert previews.sample_for_view({"type": "input", "filename": name}) == expected
        assert paths.resolve_media(name) == expected  # the widget value itself still loads (saved workflows)


def test_other_view_queries_are_left_to_comfyui(inputs):
    ask = previews.sample_for_view
    assert ask({"type": "input", "filename": "pvtt_product.png"}) is None  # a plain input file
    assert ask({"type": "output", "subfolder": "samples", "filename": "pvtt_product.png"}) is None
    assert ask({"subfolder": "samples", "filename": "pvtt_product.png"}) is None  # /view's default is output
    assert ask({"type": "input", "subfolder": "samples", "filename": "missing.png"}) is None
    assert ask({"type": "input", "subfolder": "samples", "filename": "../__init__.py"}) is None
    assert ask({"type": "input", "subfolder": "samples/..", "filename": "__init__.py"}) is None
    assert ask({"type": "input", "subfolder": "samples/x", "filename": "pvtt_product.png"}) is None
    (inputs / "samples").mkdir()
    (inputs / "samples" / "pvtt_product.png").write_bytes(b"mine")  # the user's own input/samples/ file wins
    assert ask({"type": "input", "subfolder": "samples", "filename": "pvtt_product.png"}) is None


def test_install_adds_one_middleware_and_says_when_the_server_already_started():
    pytest.importorskip("aiohttp")

    class Frozen(list):
        def append(self, item):
            raise RuntimeError("Cannot modify frozen list.")

    server = SimpleNamespace(app=SimpleNamespace(middlewares=[]))
    assert previews.install(server) and len(server.app.middlewares) == 1
    assert previews.install(SimpleNamespace(app=SimpleNamespace(middlewares=Frozen()))) is False
    assert previews.install_in_comfyui() is False  # no ComfyUI server here


def _rig() -> Path | None:
    given = os.environ.get("COMFYUI_DIR")
    return Path(given) if given and (Path(given) / "ComfyUI" / "main.py").is_file() else None


@pytest.mark.skipif(_rig() is None, reason="set COMFYUI_DIR to a comfyrig folder (ComfyUI/, venv/) to run ComfyUI")
def test_real_comfyui_serves_the_sample_preview_and_still_404s_other_missing_inputs(tmp_path):
    rig, port = _rig(), int(os.environ.get("PVTT_PREVIEW_PORT", "8197"))
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([str(rig / "venv" / "bin" / "python"), "main.py", "--cpu", "--port", str(port),
                               "--listen", "127.0.0.1"], cwd=rig / "ComfyUI", stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def get(query: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"{base}/api/view?{query}", timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""

    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{base}/object_info/PVTTLoadImage", timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        status, body = get("filename=pvtt_product.png&type=input&subfolder=samples&rand=0.5")
        assert status == 200 and body == (paths.SAMPLES_DIR / "pvtt_product.png").read_bytes()
        status, body = get("filename=pvtt_template.mp4&type=input&subfolder=samples")
        assert status == 200 and len(body) == (paths.SAMPLES_DIR / "pvtt_template.mp4").stat().st_size
        assert get("filename=no_such_file.png&type=input&subfolder=samples")[0] == 404
        assert get("filename=no_such_file.png&type=input")[0] == 404
        if (rig / "node").is_dir() and Path("/usr/bin/chromium").is_file():  # the real frontend's own requests
            workflow = Path(__file__).parents[1] / "workflows" / "PVTT 4-step template transfer.json"
            result = subprocess.run(["node", str(Path(__file__).with_name("_comfy_sample_preview.mjs")),
                                     str(workflow), "--url", base, "--node-dir", str(rig / "node")],
                                    capture_output=True, text=True, timeout=300, check=False)
            lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
            assert lines, result.stderr[-2000:]
            report = json.loads(lines[-1][len("REPORT "):])
            samples = [v for v in report["views"] if "subfolder=samples" in v["url"]]
            print(f"frontend /view requests for samples: {[(v['url'].split('?')[1][:60], v['status']) for v in samples]}")
            assert {"pvtt_product.png", "pvtt_template.mp4", "pvtt_mask.mp4"} <= \
                {v["url"].split("filename=")[1].split("&")[0] for v in samples}
            assert samples and all(v["status"] in (200, 206) for v in samples)
            assert report["images"] and all(image["decoded"] == [True] for image in report["images"])
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
