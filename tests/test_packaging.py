"""Packaging: what the Templates dialog shows, what the registry archive ships, and which dependencies a
ComfyUI user gets (issue 16, item 6)."""

from __future__ import annotations

import re
import warnings

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


# --- the trainer's extra: ComfyUI users never install it -------------------------------------------------

TRAIN_ONLY = {"matplotlib", "tensorboard", "scikit-image"}


def requirement_names(path) -> set[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {re.split(r"[<>=!~\[; ]", line)[0].lower() for line in lines if line and not line.startswith("-")}


def pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_trainer_only_packages_are_in_the_train_extra_not_the_runtime():
    runtime = requirement_names(ROOT / "requirements.txt")
    assert not runtime & TRAIN_ONLY, runtime & TRAIN_ONLY
    assert requirement_names(ROOT / "requirements-train.txt") == TRAIN_ONLY
    project = pyproject()["project"]
    dependencies = {re.split(r"[<>=!~\[; ]", d)[0].lower() for d in project["dependencies"]}
    assert dependencies == runtime, "pyproject's dependencies and requirements.txt differ"
    train = {re.split(r"[<>=!~\[; ]", d)[0].lower() for d in project["optional-dependencies"]["train"]}
    assert train == TRAIN_ONLY


def test_the_helper_names_the_same_packages_as_requirements_train():
    from pvtt_train import training_extra

    assert {req.split(">")[0] for req, _ in training_extra.PACKAGES.values()} == TRAIN_ONLY


def test_run_sh_installs_the_train_extra_for_the_demo_and_the_tests():
    script = (ROOT / "run.sh").read_text()
    demo = script.split("demo)")[1].split(";;")[0]
    test = script.split("test)")[1].split(";;")[0]
    assert "requirements-train.txt" in demo and "requirements-train.txt" in test


def test_the_pack_loads_in_comfyui_without_the_train_extra():
    """ComfyUI imports the pack; none of the trainer-only packages may be needed for that."""
    import subprocess
    import sys

    code = ("import sys\n"
            "for name in ('matplotlib', 'tensorboard', 'skimage'): sys.modules[name] = None  # not installed\n"
            "sys.path.insert(0, 'tests')\n"
            "from _comfy_pack import load_pack\n"
            "print(len(load_pack().NODE_CLASS_MAPPINGS))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.strip().splitlines()[-1]) > 10


def test_a_missing_trainer_package_is_one_clear_message(monkeypatch):
    from pvtt_train import training_extra

    monkeypatch.setattr(training_extra, "available", lambda module: module != "matplotlib")
    training_extra.require("bench", "tensorboard")  # present: no error
    try:
        training_extra.require("bench (its bench.png plot)", "matplotlib", "tensorboard")
    except training_extra.MissingTrainingPackage as exc:
        message = str(exc)
    else:
        raise AssertionError("no error for a missing package")
    assert message.startswith("bench (its bench.png plot) needs matplotlib>=3.7, which is not installed")
    assert "pip install -r requirements-train.txt" in message and "pvtt[train]" in message
    assert "\n" not in message


def test_tensorboard_missing_falls_back_to_jsonl_with_a_hint(monkeypatch, capsys):
    from pvtt_train import training_extra

    monkeypatch.setattr(training_extra, "available", lambda module: module != "tensorboard")
    assert training_extra.tensorboard_or_jsonl() is None
    hint = capsys.readouterr().out
    assert "logging to JSONL only" in hint and "requirements-train.txt" in hint
    monkeypatch.setattr(training_extra, "available", lambda module: True)
    assert training_extra.tensorboard_or_jsonl() == "tensorboard"


def test_make_accelerator_without_tensorboard_logs_jsonl_only(monkeypatch, tmp_path, capsys):
    from pvtt_train import training_extra
    from pvtt_train.distill.config import RunConfig
    from pvtt_train.distill.progressive import make_accelerator

    monkeypatch.setattr(training_extra, "available", lambda module: module != "tensorboard")
    accelerator = make_accelerator(RunConfig(), tmp_path)
    assert not accelerator.log_with, accelerator.log_with
    assert "logging to JSONL only" in capsys.readouterr().out


def test_cli_commands_stop_before_any_work_when_the_extra_is_missing(monkeypatch, tmp_path, capsys):
    import sys

    import pytest
    from pvtt_train.__main__ import main

    for module, argv, feature in (
            ("matplotlib", ["bench", "--quick", "--out", str(tmp_path / "bench")], "bench (its bench.png plot)"),
            ("matplotlib", ["demo", "--out", str(tmp_path / "demo")], "the demo (its report plot)"),
            ("skimage", ["heldout-eval", "--out", str(tmp_path / "heldout")], "heldout-eval")):
        with monkeypatch.context() as patched:
            patched.setitem(sys.modules, module, None)  # find_spec answers None: not installed
            with pytest.raises(SystemExit) as stopped:
                main(argv)
        assert stopped.value.code == 2, argv
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and feature in error and "requirements-train.txt" in error, error
        assert not any(tmp_path.iterdir()), f"{argv[0]} wrote files before failing"


# --- .comfyignore: what the Comfy registry archive ships -------------------------------------------------

def registry_file_list() -> set[str]:
    """The files ``comfy node publish`` zips: git-tracked files minus .comfyignore's gitwildmatch patterns,
    as comfy-cli's ``file_utils.zip_files`` builds the list (comment and blank lines dropped)."""
    import subprocess

    import pytest

    pathspec = pytest.importorskip("pathspec", reason="pathspec (requirements-dev.txt) matches .comfyignore as comfy-cli does")
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    lines = (ROOT / ".comfyignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    with warnings.catch_warnings():  # pathspec 1.x deprecates the name; comfy-cli still uses it
        warnings.simplefilter("ignore", DeprecationWarning)
        spec = pathspec.PathSpec.from_lines("gitwildmatch", patterns)
    return {path for path in tracked if path.strip() and not spec.match_file(path)}


def test_the_registry_archive_ships_what_the_readme_says():
    shipped = registry_file_list()
    readme = (ROOT / "README.md").read_text()
    # models_shipped/: "the tiny teacher, the 16-, 8- and 4-step students (with training logs), and the
    # identity and video encoders"
    assert "(with training logs)" in readme
    for name in ("pvtt_teacher", "pvtt_student_16step", "pvtt_student_8step", "pvtt_student_4step"):
        assert {f"models_shipped/{name}.safetensors", f"models_shipped/{name}.log.jsonl"} <= shipped, name
    for name in ("pvtt_identity_encoder", "pvtt_video_encoder"):
        assert f"models_shipped/{name}.safetensors" in shipped
    tracked_models = {p.relative_to(ROOT).as_posix() for p in (ROOT / "models_shipped").iterdir()}
    assert tracked_models & registry_tracked() <= shipped, "every tracked file in models_shipped/ ships"
    # "sample inputs (in samples/) make every workflow run"; the example workflows and their thumbnails
    for folder in ("samples", "workflows", "web", "nodes", "pvtt_train", "pvtt_accel"):
        tracked = {p for p in registry_tracked() if p.startswith(folder + "/")}
        assert tracked and tracked <= shipped, f"{folder}/ does not ship whole: {sorted(tracked - shipped)[:5]}"
    # what ComfyUI and ComfyUI-Manager read
    assert {"__init__.py", "pyproject.toml", "requirements.txt", "README.md"} <= shipped
    # images the README shows
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme):
        if not image.startswith("http"):
            assert image in shipped, f"the README shows {image}, which does not ship"


def test_the_registry_archive_leaves_out_tests_and_local_state():
    shipped = registry_file_list()
    assert not [p for p in shipped if p.startswith(("tests/", ".ci/", "out/", "runs/", "models/", "docs/bench/cache/",
                                                    ".venv"))]
    assert not [p for p in shipped if "/.pytest_cache/" in p or p.endswith(".pyc")]


def registry_tracked() -> set[str]:
    import subprocess

    return set(subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                              check=True).stdout.splitlines())


# --- registry metadata: the icon, and no invented URLs ---------------------------------------------------

def test_the_icon_is_a_400px_square_png_that_ships():
    from PIL import Image

    with Image.open(ROOT / "docs" / "icon.png") as icon:
        assert icon.format == "PNG" and icon.size == (400, 400)
    assert "docs/icon.png" in registry_file_list()


def test_registry_urls_are_real_urls_or_left_for_the_publisher():
    """The registry takes URLs for Icon, Banner and [project.urls]; a repository-relative path would be
    published as a broken link. Unset is allowed (no public remote yet): the comment says what to set."""
    data = pyproject()
    comfy = data["tool"]["comfy"]
    for key in ("Icon", "Banner"):
        assert comfy[key] == "" or re.match(r"https://\S+\.(png|jpg|jpeg|gif|svg)$", comfy[key]), (key, comfy[key])
    for key, url in data["project"].get("urls", {}).items():
        assert re.match(r"https://\S+$", url) and "<" not in url, (key, url)
    text = (ROOT / "pyproject.toml").read_text()
    if not comfy["Icon"]:
        assert "docs/icon.png" in text and "Icon = \"https://" in text  # the comment shows what to set
    if "Repository" not in data["project"].get("urls", {}):
        assert "Repository = \"https://" in text
