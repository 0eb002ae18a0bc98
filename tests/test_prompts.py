"""Text prompts as the stock WanVACEPipeline takes them: UMT5 embeddings computed the same way and
cached, CFG on prompt vs negative prompt with the reference in both branches, and a prompt that
changes the output (the same prompt and seed reproduce it)."""

import logging

import pytest
import torch
from _tiny import load_micro_teacher
from _wan_fixtures import designer_inputs, make_wan_vace_folder

from pvtt_train.errors import CheckpointError
from pvtt_train.models import text_encoder
from pvtt_train.models.loading import load_model
from pvtt_train.models.text_encoder import MAX_SEQUENCE_LENGTH, encode_prompts, prompt_embeddings
from pvtt_train.pipeline import transfer
from pvtt_train.sampling.samplers import guided_velocity, sample_from_metadata

PROMPT = "a red bottle on a wooden table, studio light"
NEGATIVE = "worst quality, blurry, static"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_wan_vace_folder(tmp_path_factory.mktemp("wan") / "Wan2.1-VACE-tiny-diffusers")


@pytest.fixture(scope="module")
def loaded(folder):
    return load_model(folder)


def test_folder_with_text_encoder_guides_on_the_negative_prompt(loaded, folder):
    conditioning = loaded.metadata["conditioning"]
    assert conditioning["uncond"] == "negative_prompt"
    assert conditioning["text_encoder"] == {"folder": str(folder.resolve()), "max_sequence_length": 512}
    plain = load_model(make_wan_vace_folder(folder.parent / "no_text", text_encoder=False))
    assert plain.metadata["conditioning"]["uncond"] == "no_reference_frame"
    assert prompt_embeddings(plain.metadata, PROMPT, NEGATIVE) == (None, None)


def test_embeddings_equal_the_stock_pipeline_encode_prompt(folder):
    pytest.importorskip("ftfy")  # the stock pipeline's prompt cleaning needs it (a PVTT requirement)
    from diffusers import WanVACEPipeline

    pipe = WanVACEPipeline.from_pretrained(folder, local_files_only=True)
    prompts = [PROMPT, "  a blue &amp;amp; white   cup  ", ""]
    with torch.no_grad():
        expected, negative = pipe.encode_prompt(prompts, negative_prompt=[NEGATIVE] * 3, device="cpu",
                                                max_sequence_length=MAX_SEQUENCE_LENGTH)
    ours = encode_prompts(folder, prompts + [NEGATIVE])
    assert ours.shape == (4, 512, 32)
    torch.testing.assert_close(ours[:3], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[3:], negative[:1], rtol=1e-5, atol=1e-6)
    length = int(pipe.tokenizer(PROMPT, return_tensors="pt").attention_mask.sum())
    assert ours[0, length:].abs().sum() == 0 and ours[0, :length].abs().sum(-1).min() > 0  # zero past the prompt


def test_each_prompt_is_encoded_once_and_the_encoder_is_let_go(folder, monkeypatch):
    loads = []
    real_load = text_encoder.load_text_encoder

    def counting_load(*args, **kw):
        loads.append(args)
        return real_load(*args, **kw)

    monkeypatch.setattr(text_encoder, "load_text_encoder", counting_load)
    first = encode_prompts(folder, ["a green glass jar of cream", "camera pans left"])
    again = encode_prompts(folder, ["camera pans left", "a green glass jar of cream"])
    assert len(loads) == 1
    assert torch.equal(first, again.flip(0))
    encode_prompts(folder, ["camera pans left", "sharp focus"])  # one new prompt: one more load
    assert len(loads) == 2


def test_truncation_to_512_tokens_and_a_missing_encoder_is_named(folder, tmp_path):
    long = " ".join(["a red bottle"] * 400)
    embeds = encode_prompts(folder, [long])
    assert embeds.shape == (1, 512, 32) and embeds[0].abs().sum(-1).min() > 0  # every position is a token
    with pytest.raises(CheckpointError, match="text-encoder"):
        encode_prompts(tmp_path, ["a prompt"])


def test_cfg_is_prompt_vs_negative_with_the_reference_in_both_branches(loaded):
    model = loaded.model
    template, mask, reference = designer_inputs()
    context, negative = prompt_embeddings(loaded.metadata, PROMPT, NEGATIVE)
    cond = model.condition(template[None], mask[None], reference[None]).with_prompts(context, negative)
    x = torch.randn(cond.background.shape, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.6])
    guided = guided_velocity(model, x, sigma, cond, 5.0)

    def transformer(embeds):  # one WanVACEPipeline branch: reference frame + full control in both
        slot = model._reference_slot(cond.features[:, :4, :1], sigma)
        out = model.transformer(hidden_states=torch.cat([slot, x], 2), timestep=sigma * 1000,
                                encoder_hidden_states=embeds, control_hidden_states=cond.features,
                                return_dict=False)[0]
        return out[:, :, 1:]

    v_prompt, v_negative = transformer(context), transformer(negative)
    torch.testing.assert_close(guided, v_negative + 5.0 * (v_prompt - v_negative), rtol=1e-4, atol=1e-5)
    # Reference-drop guidance stays available: the same prompt, no reference in the unconditional branch.
    dropped = guided_velocity(model, x, sigma, cond.with_prompts(context), 5.0)
    v_no_ref = model.velocity(x, sigma, cond.with_prompts(context), keep_reference=False)
    torch.testing.assert_close(dropped, v_no_ref + 5.0 * (v_prompt - v_no_ref), rtol=1e-4, atol=1e-5)


def test_a_different_prompt_changes_the_output_and_the_same_prompt_and_seed_repeat_it(loaded):
    model = loaded.model
    template, mask, reference = designer_inputs()
    cond = model.condition(template[None], mask[None], reference[None])  # encoded once: the VAE is the slow part

    def run(prompt, seed=0, guidance=None, mode=None):
        context, negative = prompt_embeddings(loaded.metadata, prompt, NEGATIVE, mode)
        return sample_from_metadata(model, cond.with_prompts(context, negative), loaded.metadata, steps=2,
                                    generator=torch.Generator().manual_seed(seed), guidance=guidance)

    out = run(PROMPT)
    assert torch.equal(out, run(PROMPT))
    assert (out - run("a blue running shoe turning slowly")).abs().max() > 1e-4
    assert (out - run(PROMPT, seed=1)).abs().max() > 1e-4
    assert (out - run(PROMPT, guidance=1.0)).abs().max() > 1e-4  # the checkpoint's CFG 5 is applied by default
    assert (out - run(PROMPT, mode="reference")).abs().max() > 1e-4


def test_the_embedded_model_ignores_the_prompt_and_says_so_once(tmp_path, caplog):
    teacher = load_micro_teacher(tmp_path, steps=4)
    template, mask, reference = designer_inputs(frames=9, height=16, width=16)
    with caplog.at_level(logging.INFO, logger="pvtt_train.pipeline"):
        with_prompt = transfer(teacher, template, mask, reference, steps=1, prompt=PROMPT)
        transfer(teacher, template, mask, reference, steps=1, prompt=PROMPT)
    assert torch.equal(with_prompt, transfer(teacher, template, mask, reference, steps=1))
    assert sum("takes no text prompt" in r.message for r in caplog.records) == 1


def test_template_transfer_node_takes_the_prompts_as_optional_last_inputs(folder):
    import importlib

    from _comfy_pack import PACKAGE

    nodes = importlib.import_module(f"{PACKAGE}.nodes.sampling_nodes")
    loading = importlib.import_module(f"{PACKAGE}.pvtt_train.models.loading")
    schema = nodes.PVTTTemplateTransfer.INPUT_TYPES()
    assert list(schema["optional"])[:2] == ["prompt", "negative_prompt"]  # photo_detail came after them
    assert all(schema["optional"][name][1]["tooltip"] and schema["optional"][name][1]["multiline"]
               for name in ("prompt", "negative_prompt"))
    model = loading.load_model(folder)
    template, mask, reference = designer_inputs()
    node = nodes.PVTTTemplateTransfer()

    def run(*prompts):
        return node.transfer(model, template, mask, reference[None], 2, 0, True, *prompts)["result"][0]

    assert (run(PROMPT, NEGATIVE) - run("a white coffee cup", NEGATIVE)).abs().max() > 1e-4
