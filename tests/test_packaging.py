"""Packaging: what the Templates dialog shows, what the registry archive ships, and which dependencies a
ComfyUI user gets (issue 16, item 6)."""

from __future__ import annotations

import re

from _comfy_pack import ROOT

WORKFLOW_DIR = ROOT / "workflows"


# --- workflows/: ComfyUI's Templates dialog shows each file's name as its title -----------------------

def test_every_workflow_name_is_a_readable_title_with_a_thumbnail():
    workflows = sorted(WORKFLOW_DIR.glob("*.json"))
    assert len(workflows) >= 6, workflows
    for path in workflows:
        title = path.stem
        assert " " in title and "_" not in title, f"{path.name}: the Templates dialog shows this name; use words"
        assert re.fullmatch(r"[A-Z][A-Za-z0-9 ,.()+-]{5,60}", title), f"{path.name}: not a short readable title"
        assert path.with_suffix(".jpg").is_file(), f"{path.name} has no thumbnail {title}.jpg"
    thumbnails = {p.stem for p in WORKFLOW_DIR.glob("*.jpg")}
    assert thumbnails == {p.stem for p in workflows}, "every thumbnail belongs to a workflow of the same name"
    assert not [p.name for p in WORKFLOW_DIR.iterdir() if p.suffix not in {".json", ".jpg"} and p.is_file()]


def test_no_text_names_a_workflow_by_its_old_file_name():
    old = ("pvtt_4step_template_transfer", "pvtt_accelerated.json", "pvtt_background_mask_editing",
           "pvtt_compare_teacher_students", "native_wan_vace_pvtt_lora.json", "native_wan_vace_pvtt_student")
    texts = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "web" / "docs").glob("*.md"),
             *(ROOT / "tests").glob("*.py"), *(ROOT / "nodes").glob("*.py")]
    for path in texts:
        if path.name == "test_packaging.py":
            continue
        text = re.sub(r"screenshots/\w+\.png", "", path.read_text())  # screenshots keep their file names
        stale = [name for name in old if name in text]
        assert not stale, f"{path.relative_to(ROOT)} still names {stale}"
