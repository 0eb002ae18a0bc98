"""Frozen parts stay frozen: distilling a Wan-VACE teacher trains its transformer only; the VAE
(whose decoder pixel-space losses backpropagate through) is bit-identical afterwards."""

import torch
from _tiny import micro_encoders
from _wan_fixtures import make_wan_vace_folder

from pvtt_train.data.synthetic import SyntheticConfig
from pvtt_train.distill.config import RunConfig, StageConfig
from pvtt_train.distill.progressive import make_accelerator
from pvtt_train.distill.trainer import StageInputs, train_stage, trainable_copy
from pvtt_train.identity.encoder import load_identity_encoder
from pvtt_train.models.checkpoint import load_checkpoint, save_checkpoint
from pvtt_train.models.loading import load_model


def test_trainable_copy_freezes_everything_but_the_transformer(tmp_path):
    teacher = load_model(make_wan_vace_folder(tmp_path / "wan"))
    copy_, params = trainable_copy(teacher.model, "cpu")
    assert {id(p) for p in params} == {id(p) for p in copy_.transformer.parameters()}
    assert all(p.requires_grad for p in copy_.transformer.parameters())
    assert not any(p.requires_grad for p in copy_.vae.parameters()) and not copy_.context.requires_grad


def test_distillation_leaves_the_vae_bit_identical_and_trains_the_transformer(tmp_path):
    teacher = load_model(make_wan_vace_folder(tmp_path / "wan"))
    identity, _ = micro_encoders(tmp_path)
    # Temporal and identity losses decode the student's x0 with gradients: the path that trained the decoder.
    stage = StageConfig(name="s", timesteps=(1000, 500), generator_steps=2, critic_ratio=1, lr_student=1e-3,
                        lr_critic=1e-3, losses=("dmd", "temporal", "identity", "background"))
    run = RunConfig(batch_size=1, log_every=1)
    inputs = StageInputs(teacher=teacher, real=teacher.model, real_cfg=2.0, student_init=teacher.model,
                         critic_init=teacher.model, data=SyntheticConfig(frames=9, height=32, width=32),
                         identity=load_identity_encoder(identity))
    result = train_stage(make_accelerator(run, tmp_path, trackers=False), inputs, stage, run, None, False,
                         tmp_path / "log.jsonl", progress=False)
    metadata = {k: teacher.metadata[k] for k in ("schedule", "sampler", "video", "conditioning")}
    exported = save_checkpoint(tmp_path / "student.safetensors", result.student, {**metadata, "stage": "s"})
    before = teacher.model.state_dict()
    for trained in (load_checkpoint(exported).model.state_dict(), result.critic.state_dict()):
        vae = [k for k in before if k.startswith("vae.")]
        assert len(vae) > 80
        changed_vae = [k for k in vae if not torch.equal(trained[k], before[k])]
        assert changed_vae == [], f"{len(changed_vae)}/{len(vae)} VAE tensors changed, e.g. {changed_vae[:3]}"
        assert torch.equal(trained["context"], before["context"])
        assert any(not torch.equal(trained[k], before[k]) for k in before if k.startswith("transformer."))
