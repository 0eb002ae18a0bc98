"""Every shipped workflow still matches the node schemas, so it loads and queues without errors.

The frontend stores widget values by position and links by slot index: renaming a node, adding a
widget in the middle or retyping an output silently breaks saved graphs ("Some Nodes Are
Missing", "Value not in list", red links). These checks catch that before a designer does.

The native workflows also use ComfyUI's own nodes (UNETLoader, SamplerCustomAdvanced, ...). Their schemas
come from ``comfy_core_nodes.json``, recorded from ComfyUI by ``_comfy_native_probe.py core_schemas`` and
checked against the running ComfyUI by ``test_native_comfy.py`` when ``COMFYUI_DIR`` is set; their
model-file dropdowns accept any ``.safetensors`` name, as the designer's files are not known here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _comfy_pack import ROOT, load_pack

PACK_NODES = load_pack().NODE_CLASS_MAPPINGS
CORE_SCHEMAS = json.loads((Path(__file__).with_name("comfy_core_nodes.json")).read_text())
FRONTEND_ONLY = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
SEED_CONTROLS = {"fixed", "increment", "decrement", "randomize"}
#: Checkpoints the workflows may name although no models folder exists in CI (the lead ships them).
SHIPPED_MODELS = {"pvtt_student_4step.safetensors", "pvtt_teacher.safetensors",
                  "pvtt_teacher_paste_residual.safetensors",
                  *(f"pvtt_residual_student_{n}step.safetensors" for n in (16, 8, 4))}
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
#: A core Load Video's file is the designer's upload, in the input folder (not known here).
VIDEO_FILES = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif", ".m4v"}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


class CoreNode:
    """A ComfyUI core node as recorded in comfy_core_nodes.json, behind the node-class interface used here."""

    def __init__(self, schema: dict):
        self.schema = schema
        self.RETURN_TYPES = tuple(schema["return_types"])

    def INPUT_TYPES(self):
        return {group: {name: tuple(spec) for name, spec in self.schema[group].items()}
                for group in ("required", "optional")}


NODES = {**{name: CoreNode(schema) for name, schema in CORE_SCHEMAS.items()}, **PACK_NODES}


def input_specs(node_type: str) -> dict[str, tuple]:
    schema = NODES[node_type].INPUT_TYPES()
    return {**schema.get("required", {}), **schema.get("optional", {})}


def is_model_file_choice(node_type: str, name: str, spec: tuple, value) -> bool:
    """A model-file dropdown's value: any .safetensors name for a core loader; for PVTT Student Sigmas, one
    in the folders it lists (the files themselves are the designer's)."""
    if isinstance(value, str) and len(spec) > 1 and spec[1].get("input_files") == "video":
        return Path(value.removesuffix(" [input]")).suffix.lower() in VIDEO_FILES  # the designer's upload
    if not isinstance(value, str) or not value.endswith(".safetensors"):
        return False
    if len(spec) > 1 and spec[1].get("model_folder"):
        return True
    if node_type == "PVTTStudentSigmas" and name == "student":
        from importlib import import_module

        folders = import_module(load_pack().__name__ + ".nodes.native_nodes").SIGMA_FOLDERS + ("pvtt",)
        return value.partition("/")[0] in folders
    return False


def is_widget(spec: tuple) -> bool:
    return isinstance(spec[0], list) or (spec[0] in WIDGET_TYPES and not spec[1].get("forceInput"))


def socket_type(spec: tuple) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def has_upload_button(node_type: str) -> bool:
    return any(len(spec) > 1 and (spec[1].get("image_upload") or spec[1].get("video_upload")
                                  or spec[1].get("input_files")) for spec in input_specs(node_type).values())


def pvtt_nodes(workflow: dict) -> list[dict]:
    return [n for n in workflow["nodes"] if n["type"] not in FRONTEND_ONLY]


def test_there_is_a_workflow():
    assert WORKFLOWS, "workflows/ holds no .json file"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_ui_format_version_0_4(path):
    workflow = load(path)
    assert workflow["version"] == 0.4 and isinstance(workflow["links"], list)
    assert workflow["last_node_id"] >= max(n["id"] for n in workflow["nodes"])
    assert workflow["last_link_id"] >= max((link[0] for link in workflow["links"]), default=0)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_node_type_is_registered(path):
    unknown = {n["type"] for n in load(path)["nodes"]} - set(NODES) - FRONTEND_ONLY
    assert not unknown, f"{path.name} uses node types neither this pack nor comfy_core_nodes.json knows: {unknown}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_node_inputs_match_the_schema(path):
    for node in pvtt_nodes(load(path)):
        specs = input_specs(node["type"])
        for slot in node["inputs"]:
            if slot["name"] == "upload" and slot["type"] == "IMAGEUPLOAD" and has_upload_button(node["type"]):
                continue  # the frontend's upload button, added for image_upload / video_upload
            assert slot["name"] in specs, f"node {node['id']} has an input {slot['name']!r} the schema lacks"
            assert slot["type"] == socket_type(specs[slot["name"]]), f"node {node['id']} input {slot['name']}"
        sockets = [name for name, spec in specs.items() if not is_widget(spec)]
        linked = {s["name"] for s in node["inputs"] if s.get("link") is not None}
        required = NODES[node["type"]].INPUT_TYPES()["required"]
        assert {s for s in sockets if s in required} <= linked, f"node {node['id']} has unconnected inputs"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_node_outputs_match_the_schema(path):
    """Outputs are only ever appended (links refer to them by index): a graph saved before an output was added
    lists a prefix of today's outputs, and its links still land on the same types."""
    for node in pvtt_nodes(load(path)):
        saved, now = [o["type"] for o in node["outputs"]], list(NODES[node["type"]].RETURN_TYPES)
        assert saved == now[:len(saved)] and (saved or not now), f"node {node['id']} ({node['type']}) outputs {saved} vs {now}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_template_comes_from_exactly_one_socket(path):
    """Template Transfer and Background Preserve take the template as IMAGE or as core VIDEO, not both."""
    for node in pvtt_nodes(load(path)):
        if "template_core_video" in input_specs(node["type"]):
            linked = {s["name"] for s in node["inputs"] if s.get("link") is not None}
            assert len(linked & {"template_video", "template_core_video"}) == 1, f"node {node['id']}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_widget_values_are_valid(path):
    for node in pvtt_nodes(load(path)):
        values = list(node["widgets_values"])
        for name, spec in input_specs(node["type"]).items():
            if not is_widget(spec):
                continue
            assert values, f"node {node['id']} ({node['type']}) lacks a value for {name}"
            value = values.pop(0)
            where = f"node {node['id']} ({node['type']}).{name} = {value!r}"
            if isinstance(spec[0], list):
                allowed = set(spec[0]) | (SHIPPED_MODELS if name == "model_name" else set())
                assert value in allowed or is_model_file_choice(node["type"], name, spec, value), \
                    f"{where} is not in the dropdown"
            elif spec[0] == "BOOLEAN":
                assert isinstance(value, bool), where
            elif spec[0] == "STRING":
                assert isinstance(value, str), where
            else:
                assert isinstance(value, (int, float)) and not isinstance(value, bool), where
                assert spec[0] == "FLOAT" or float(value).is_integer(), where
                assert spec[1].get("min", value) <= value <= spec[1].get("max", value), f"{where} out of range"
                if spec[1].get("control_after_generate"):
                    assert values and values.pop(0) in SEED_CONTROLS, f"{where} lacks its control_after_generate"
        if values == ["image"] and has_upload_button(node["type"]):
            values = []  # the frontend saves its upload button's label last; it is never sent to the server
        assert not values, f"node {node['id']} ({node['type']}) has extra widget values {values}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_links_connect_existing_slots_of_matching_type(path):
    workflow = load(path)
    by_id = {n["id"]: n for n in workflow["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, link_type in workflow["links"]:
        assert src in by_id and dst in by_id, f"link {link_id} refers to a missing node"
        output, target = by_id[src]["outputs"][src_slot], by_id[dst]["inputs"][dst_slot]
        assert output["type"] == target["type"] == link_type, f"link {link_id}: {output['type']} -> {target['type']}"
        assert link_id in output["links"] and target["link"] == link_id, f"link {link_id} is not mirrored in its nodes"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_slot_link_is_listed(path):
    workflow = load(path)
    listed = {link[0] for link in workflow["links"]}
    for node in workflow["nodes"]:
        used = {s["link"] for s in node.get("inputs", []) if s.get("link") is not None}
        used |= {i for s in node.get("outputs", []) for i in s.get("links") or []}
        assert used <= listed, f"node {node['id']} refers to links {used - listed} that do not exist"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_explains_itself_in_a_note(path):
    notes = [n for n in load(path)["nodes"] if n["type"] in FRONTEND_ONLY]
    assert notes and all(len(n["widgets_values"][0]) > 100 for n in notes)
