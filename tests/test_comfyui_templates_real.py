"""The shipped workflows in ComfyUI's Templates dialog, in the real frontend, as a designer finds them.

Runs only with ``COMFYUI_DIR`` set (see test_comfyui_real.py, whose rig and server fixture this reuses).
The dialog titles each custom-node template with its file name, so the files carry readable titles with
spaces; the frontend builds the thumbnail and workflow URLs from those names, and the server must answer
them (spaces and all). The dialog's screenshot goes to ``out/comfyui_real/templates_dialog.png``.
"""

from __future__ import annotations

import json
import os
import subprocess
from urllib.parse import quote

import pytest
from _comfy_pack import ROOT
from test_comfyui_real import ARTIFACTS, TOOLS, URL, WORKFLOWS, comfy, get_json  # noqa: F401  (comfy: fixture)

pytestmark = pytest.mark.skipif(not os.environ.get("COMFYUI_DIR"), reason="set COMFYUI_DIR to a ComfyUI git dir or "
                                                                          "a comfyrig rig folder to run this test")
OPEN = "PVTT 4-step template transfer"
DRIVER = ROOT / "tests" / "comfyui_templates_dialog.mjs"


def test_the_server_lists_every_workflow_under_the_pack(comfy):
    listed = get_json("/api/workflow_templates")
    assert sorted(listed.get(ROOT.name, [])) == sorted(w.stem for w in WORKFLOWS), listed
    for workflow in WORKFLOWS:
        assert get_json(f"/api/workflow_templates/{quote(ROOT.name)}/{quote(workflow.name)}") == \
            json.loads(workflow.read_text())


def test_the_templates_dialog_shows_readable_titles_and_opens_a_template(comfy):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "templates_dialog.png"
    done = subprocess.run(["node", str(DRIVER), URL, ROOT.name, OPEN, str(shot)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COMFYRIG_NODE_DIR": str(comfy / "node")}, check=False)
    report = done.stdout + done.stderr
    (ARTIFACTS / "templates_dialog.log").write_text(report)
    assert done.returncode == 0, report
    result = json.loads(report.split("RESULT ", 1)[1].splitlines()[0])
    # every workflow's readable title is on a card
    assert sorted(result["titles"]) == sorted(w.stem for w in WORKFLOWS), result["titles"]
    assert all(" " in title and "_" not in title for title in result["titles"])
    # every thumbnail was fetched by its name with spaces, and served
    prefix = f"/api/workflow_templates/{ROOT.name}/"
    thumbnails = {path[len(prefix):]: status for status, path in result["requests"] if path.endswith(".jpg")}
    assert thumbnails == {f"{w.stem}.jpg": 200 for w in WORKFLOWS}, result["requests"]
    # clicking a card loads that workflow onto the canvas
    assert [200, f"{prefix}{OPEN}.json"] in result["requests"], result["requests"]
    expected = json.loads((ROOT / "workflows" / f"{OPEN}.json").read_text())
    opened = result["opened"]
    assert opened["nodes"] == len(expected["nodes"]) and not opened["dialogOpen"], opened
    assert opened["types"] == sorted({n["type"] for n in expected["nodes"]}), opened
    assert shot.is_file()
