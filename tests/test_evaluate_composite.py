"""What designers get is ``background_preserve`` with Background Preserve's defaults: the node, the shipped
workflows and ``sample``. ``evaluate.generate`` and the gates score the composite their thresholds were
calibrated on (``evaluate.COMPOSITE``), and the gates' teacher cache is keyed by it."""

import json

import pytest
import torch
from _comfy_pack import ROOT
from _node_fixtures import nodes, run
from _tiny import load_micro_teacher

from pvtt_train import sample_cli
from pvtt_train.data.dataset import heldout_of
from pvtt_train.data.synthetic import SyntheticConfig
from pvtt_train.distill import gates
from pvtt_train.eval import evaluate
from pvtt_train.sampling import composite

NODE = nodes["PVTTBackgroundPreserve"]


def widgets():
    return NODE.INPUT_TYPES()["required"]


def test_the_node_keeps_its_widget_names_and_order_with_the_new_defaults():
    required = widgets()
    # saved workflows: the widgets keep their order; template_video became an optional socket beside
    # template_core_video (issue 16), which sockets may do without shifting any widget value
    assert list(required) == ["generated", "mask", "dilate_px", "feather_px"]
    assert list(NODE.INPUT_TYPES()["optional"]) == ["template_video", "template_core_video"]
    assert required["dilate_px"][1]["default"] == 0 and required["feather_px"][1]["default"] == 0.0
    assert (required["dilate_px"][1]["min"], required["dilate_px"][1]["max"]) == (0, 64)
    assert (required["feather_px"][1]["min"], required["feather_px"][1]["max"]) == (0.0, 32.0)
    for name, (_, options) in required.items():
        assert len(options["tooltip"]) > 20, name
    assert "never" in required["feather_px"][1]["tooltip"] and "old product" in required["feather_px"][1]["tooltip"]
    help_page = (ROOT / "web" / "docs" / "PVTTBackgroundPreserve.md").read_text()
    assert "defaults 0 and 0.0" in help_page and "bit for bit" in help_page


def test_sample_uses_the_node_defaults_and_the_gates_score_the_evaluation_composite():
    required = widgets()
    defaults = (required["dilate_px"][1]["default"], required["feather_px"][1]["default"])
    assert (sample_cli.GROW_PX, sample_cli.FEATHER_PX) == defaults
    assert evaluate.COMPOSITE == {"fn": "soft_mask", "dilate": 1, "feather": 1.0}  # what the gates are calibrated on
    assert gates.COMPOSITE is evaluate.COMPOSITE


def test_the_old_composites_are_gone():
    for name in ("composite", "composite_inside", "inward_alpha"):
        assert not hasattr(composite, name), name
    sources = [p for p in (ROOT / "pvtt_train").rglob("*.py")] + list((ROOT / "nodes").rglob("*.py"))
    for path in sources:
        text = path.read_text()
        for name in ("composite_inside(", "inward_alpha(", "import composite\n", "import composite,"):
            assert name not in text, f"{path}: {name}"


@pytest.mark.parametrize("workflow", ["PVTT 4-step template transfer", "PVTT accelerated template transfer",
                                      "PVTT mask editing and background preserve"])
def test_shipped_workflows_use_the_defaults(workflow):
    graph = json.loads((ROOT / "workflows" / f"{workflow}.json").read_text())
    preserve = [n for n in graph["nodes"] if n["type"] == "PVTTBackgroundPreserve"]
    assert preserve and all(n["widgets_values"] == [0, 0] for n in preserve)


def test_node_output_is_background_preserve():
    g = torch.Generator().manual_seed(0)
    template, generated = torch.rand(3, 20, 24, 3, generator=g), torch.rand(3, 20, 24, 3, generator=g)
    mask = torch.zeros(3, 20, 24)
    mask[:, 5:15, 6:18] = 1
    mask[:, 4, 6:18] = 0.3  # an anti-aliased fringe row
    video, soft = run("PVTTBackgroundPreserve", generated=generated, template_video=template, mask=mask,
                      dilate_px=0, feather_px=0.0)
    expected, alpha = composite.background_preserve(template, generated, mask, return_alpha=True)
    assert torch.equal(video, expected) and torch.equal(soft, alpha)
    assert 0 < float(soft[0, 4, 10]) < 1  # the fringe is blended, not cut at 0.5
    assert torch.equal(video[mask == 0], template[mask == 0])


def test_evaluate_generate_composites_with_the_evaluation_composite(tmp_path):
    loaded = load_micro_teacher(tmp_path, steps=1)
    batch = heldout_of(SyntheticConfig(), 2)
    out = evaluate.generate(loaded, batch, seed=0)
    alpha = composite.soft_mask(batch["mask"], 1, 1.0)
    assert torch.equal(out.composited, composite.blend(out.raw, batch["template"], alpha))
    outside, inside = alpha == 0, batch["mask"] >= 1
    assert outside.any() and inside.any() and (alpha[batch["mask"] == 0] > 0).any()  # it does reach outside
    assert torch.equal(out.composited[outside], batch["template"][outside])
    assert torch.equal(out.composited[inside], out.raw[inside])


def test_the_gates_teacher_cache_is_keyed_by_the_composite(tmp_path, monkeypatch):
    evaluator = object.__new__(gates.GateEvaluator)  # no encoder or clips needed for the cache key
    evaluator.cache_dir, evaluator.seed, evaluator.clips, evaluator.data_key = tmp_path, 0, 2, {}
    evaluator.videos = {}
    calls = []

    def fake_generate(_teacher):
        calls.append(1)
        return torch.zeros(2, 1, 4, 4, 3), torch.full((2, 1, 4, 4, 3), float(len(calls))), 1.0

    monkeypatch.setattr(evaluator, "_generate", fake_generate)
    monkeypatch.setattr(evaluator, "_summary", lambda raw, comp, seconds: {"comp": float(comp.mean())})
    teacher_file = tmp_path / "teacher.safetensors"
    teacher_file.write_bytes(b"teacher")
    teacher = type("Teacher", (), {"path": teacher_file, "sampler": {"kind": "euler_cfg", "steps": 2}})()

    assert evaluator.score_teacher(teacher) == {"comp": 1.0} and len(calls) == 1
    assert evaluator.score_teacher(teacher) == {"comp": 1.0} and len(calls) == 1  # cached
    monkeypatch.setattr(gates, "COMPOSITE", {**gates.COMPOSITE, "dilate": 2})
    assert evaluator.score_teacher(teacher) == {"comp": 2.0} and len(calls) == 2  # another composite: rescored
    assert len(list(tmp_path.glob("teacher-gate-*.safetensors"))) == 2
