"""What an expert review asked for: each test fails when the capability it names is broken or faked."""

import io

import numpy as np
import pytest
import torch

from helpers import arcface_onnx, randomize_zero_paths, tiny_base, tiny_pipeline
from mgfr_cli.faces.conditions import FaceConditions
from mgfr_cli.faces.helper import AlignedFace
from mgfr_cli.model.pipeline import MgfrPipeline, RestoreSettings

FAST = RestoreSettings(steps=3, color_fix="none")


def _face(img) -> AlignedFace:
    return AlignedFace(crop=np.ascontiguousarray(img), landmarks=np.zeros((5, 2)), affine=np.eye(2, 3), index=0)


@pytest.fixture(scope="module")
def faces():
    import skimage.data

    a = np.ascontiguousarray(skimage.data.astronaut()[:512, :512])
    return a, _face(a[::-1]), _face(np.ascontiguousarray(a[:, ::-1, ::-1]))


@pytest.fixture(scope="module")
def trained_pipe():
    """A tiny pipeline whose every zero-initialised weight, input-conv halves included, is random."""
    pipe = tiny_pipeline()
    randomize_zero_paths(pipe.adapter, scale=0.2)
    return pipe


def _out(pipe, crop, cond, settings=FAST):
    return pipe.restore([crop], [cond], settings).images[0].astype(int)


# -- inputs really reach the model ---------------------------------------------------------------
def test_lq_content_and_reference_content_change_the_output(trained_pipe, faces):
    crop, ref_a, ref_b = faces
    base = _out(trained_pipe, crop, FaceConditions(references=(ref_a,)))
    other_lq = _out(trained_pipe, np.ascontiguousarray(crop[:, ::-1]), FaceConditions(references=(ref_a,)))[:, ::-1]
    other_ref = _out(trained_pipe, crop, FaceConditions(references=(ref_b,)))
    assert np.abs(other_lq - base).mean() > 1.0  # the LQ latent enters through the input conv's second half
    assert np.abs(other_ref - base).mean() > 0.3  # the reference image itself, not just "a reference"


def test_guided_prediction_is_each_branch_with_its_own_text(trained_pipe, faces):
    """``_predict`` must equal eps(c) + w_nq (eps(c) - eps(nq)) + w_na (eps(c) - eps(na)), each eps from
    its own text (RCA included): catches a flipped sign, swapped branches, or RCA reading the positive text."""
    pipe = trained_pipe
    crop, ref, _ = faces
    z_lq = pipe.encode_images(pipe.to_tensor([crop]))
    texts = [pipe.encode_prompts([t]) for t in ("a photo of a man", "a bad photo", "a photo of glasses")]
    refs_all = pipe.prepare_references(z_lq, [FaceConditions(references=(ref,))], texts)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    with torch.no_grad():
        guided = pipe._predict(x, t, torch.cat(texts), z_lq.repeat(3, 1, 1, 1), refs_all, 2.0,
                               torch.full((1, 1, 1, 1), 0.5))

        def eps(text):
            state = pipe.prepare_references(z_lq, [FaceConditions(references=(ref,))], [text])
            res = pipe.adapter(x, t, text, z_lq, state)
            return pipe.base.unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=res.down,
                                  mid_block_additional_residual=res.mid).sample

        c, nq, na = (eps(tx) for tx in texts)
    expected = c + 2.0 * (c - nq) + 0.5 * (c - na)
    assert (guided - expected).abs().max() < 1e-4
    assert (c - nq).abs().max() > 1e-3  # the branches do differ, so the check above means something



def test_control_strength_scales_what_the_adapter_gives_the_unet(trained_pipe, faces):
    """``--control-strength s`` (DiffBIR's ``--strength``) is an adapter whose convs into the UNet give s times
    their residuals; 0 is the base UNet alone, with the same guidance; ``restore`` samples with it."""
    import copy
    from dataclasses import replace

    pipe = trained_pipe
    crop, ref, _ = faces
    z_lq = pipe.encode_images(pipe.to_tensor([crop]))
    texts = [pipe.encode_prompts([t]) for t in ("a photo of a man", "a bad photo")]
    refs_all = pipe.prepare_references(z_lq, [FaceConditions(references=(ref,))], texts)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t, w_na = torch.tensor(500), torch.zeros(1, 1, 1, 1)

    def predict(strength, adapter=None):
        own = pipe.adapter
        pipe.adapter = adapter or own
        try:
            with torch.no_grad():
                return pipe._predict(x, t, torch.cat(texts), z_lq.repeat(2, 1, 1, 1), refs_all, 2.0, w_na, strength)
        finally:
            pipe.adapter = own

    scaled = copy.deepcopy(pipe.adapter)
    with torch.no_grad():
        for conv in (*scaled.lca_down_zero, scaled.lca_mid_zero):
            conv.weight.mul_(0.5)
            conv.bias.mul_(0.5)
    full, half = predict(1.0), predict(0.5)
    assert (half - predict(1.0, scaled)).abs().max() < 1e-4
    assert (half - full).abs().max() > 1e-3
    with torch.no_grad():
        c, nq = (pipe.base.unet(x, t, encoder_hidden_states=text).sample for text in texts)
    assert (predict(0.0) - (c + 2.0 * (c - nq))).abs().max() < 1e-4
    weak = replace(FAST, control_strength=0.5)
    restored = _out(pipe, crop, FaceConditions(), weak)
    own, pipe.adapter = pipe.adapter, scaled
    try:
        assert np.abs(restored - _out(pipe, crop, FaceConditions())).max() <= 1
    finally:
        pipe.adapter = own
    assert np.abs(restored - _out(pipe, crop, FaceConditions())).mean() > 0.5


def test_control_strength_at_its_default_leaves_the_recipe_of_earlier_outputs():
    """Outputs made before the setting existed stay recognised (a resume is not a redo); another value is not."""
    from mgfr_cli.app.outputs import recipe_text
    from mgfr_cli.faces.conditions import ConditionSpec
    from mgfr_cli.faces.helper import FaceSelection

    def text(**kw):
        return recipe_text(RestoreSettings(**kw), "m", ConditionSpec(), 1.0, FaceSelection(), False, None, 3, 0.3)

    assert "control_strength" not in text() and "control_strength" not in text(control_strength=1.0)
    assert '"control_strength": 0.5' in text(control_strength=0.5)
    with pytest.raises(Exception, match="--control-strength"):
        RestoreSettings(control_strength=2.5).check()

def test_quality_guidance_direction(trained_pipe, faces):
    """More quality guidance moves the result away from what the negative-quality prompt alone gives."""
    crop = faces[0]
    pipe = trained_pipe
    outs = {w: _out(pipe, crop, FaceConditions(), RestoreSettings(steps=3, color_fix="none", guidance_quality=w))
            for w in (0.0, 3.0, -1.0)}
    # w = -1 is eps(nq) exactly: the negative-quality prompt alone
    assert np.abs(outs[3.0] - outs[-1.0]).mean() > np.abs(outs[0.0] - outs[-1.0]).mean()


def test_scheduler_choice_is_honoured_and_spacing_is_trailing(trained_pipe, faces, monkeypatch):
    import mgfr_cli.model.pipeline as pipeline_module
    from mgfr_cli.model.sampling import make_scheduler

    made = []
    monkeypatch.setattr(pipeline_module, "make_scheduler", lambda name, cfg: made.append(make_scheduler(name, cfg)) or made[-1])
    crop = faces[0]
    ddim = _out(trained_pipe, crop, FaceConditions(), RestoreSettings(steps=3, scheduler="ddim", color_fix="none"))
    dpm = _out(trained_pipe, crop, FaceConditions(), RestoreSettings(steps=3, scheduler="dpmpp", color_fix="none"))
    assert [type(s).__name__ for s in made] == ["DDIMScheduler", "DPMSolverMultistepScheduler"]
    assert all(int(s.timesteps[0]) == 999 for s in made)  # trailing: 30 or 3 steps, the first is t = T-1
    assert np.abs(ddim - dpm).mean() > 0.1


# -- references and identity follow what the adapter was trained for ----------------------------------
def test_stage1_adapter_skips_references_and_reports_them(faces):
    pipe = tiny_pipeline()
    randomize_zero_paths(pipe.adapter, scale=0.2)
    pipe.adapter.register_to_config(stages_trained=[1])
    pipe = MgfrPipeline(pipe.base, pipe.adapter)
    crop, ref, _ = faces
    with_ref = pipe.restore([crop], [FaceConditions(references=(ref,))], FAST)
    without = pipe.restore([crop], [FaceConditions()], FAST)
    assert np.array_equal(with_ref.images[0], without.images[0]) and with_ref.ignored == ("references",)
    assert without.ignored == ()


def test_identity_required_where_trained_and_unused_where_not(tmp_path, faces):
    from mgfr_cli.errors import WeightsError
    from mgfr_cli.model.loading import build_pipeline

    base = tiny_base()
    base.save(tmp_path / "base")
    pipe = tiny_pipeline()
    onnx = arcface_onnx(tmp_path / "arc.onnx")
    pipe.adapter.register_to_config(stages_trained=[1, 2], use_identity=True)
    pipe.adapter.save_pretrained(tmp_path / "with-id")
    with pytest.raises(WeightsError, match=r"missing weights: .*nope\.onnx.*ArcFace identity.*mgfr weights fetch arcface"):
        build_pipeline(tmp_path / "base", tmp_path / "with-id", identity_path=tmp_path / "nope.onnx", device="cpu",
                       dtype=torch.float32)
    assert build_pipeline(tmp_path / "base", tmp_path / "with-id", identity_path=onnx, device="cpu",
                          dtype=torch.float32).identity is not None
    pipe.adapter.register_to_config(use_identity=False)
    pipe.adapter.save_pretrained(tmp_path / "no-id")
    assert build_pipeline(tmp_path / "base", tmp_path / "no-id", identity_path=onnx, device="cpu",
                          dtype=torch.float32).identity is None


def test_identity_embedding_is_arcface_on_the_template_crop(tmp_path, faces):
    """The embedding equals onnxruntime run by hand on insightface's norm_crop of the five template points."""
    import onnxruntime as ort
    from insightface.utils.face_align import norm_crop

    from mgfr_cli.faces.helper import FFHQ_TEMPLATE_512
    from mgfr_cli.faces.identity import IdentityEncoder

    path = arcface_onnx(tmp_path / "arc.onnx")
    crop = faces[0]
    got = IdentityEncoder(path).embed([crop])[0]
    bgr = norm_crop(np.ascontiguousarray(crop[:, :, ::-1]), FFHQ_TEMPLATE_512, 112)
    blob = ((bgr[:, :, ::-1].astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: blob})[0][0]
    assert np.allclose(got, ref / np.linalg.norm(ref), atol=1e-4)


def test_identity_encoder_uses_its_own_gpu():
    from mgfr_cli.faces.identity import providers_for

    assert providers_for("cpu") == ["CPUExecutionProvider"]
    assert providers_for("cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": 1})


# -- degradations and prompts ---------------------------------------------------------------------
def test_jpeg_degradation_is_a_true_rgb_jpeg(faces):
    from PIL import Image

    from mgfr_cli.training.degrade import DegradeConfig, degrade

    crop = faces[0]
    cfg = DegradeConfig(blur_prob=0.0, downsample=(1.0, 1.0), noise=(0.0, 0.0), jpeg=(25, 25), min_size=32)
    lq, params = degrade(crop, cfg, np.random.default_rng(0))
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, "JPEG", quality=25)
    pil = np.asarray(Image.open(buf)).astype(int)
    assert params["jpeg"] == 25
    assert np.abs(lq.astype(int) - pil).mean() < 0.6  # libjpeg via OpenCV and via Pillow, both on RGB


def test_training_and_restore_speak_the_same_prompt(tmp_path):
    import cv2

    from mgfr_cli.training.data import FaceDataset, PromptConfig
    from mgfr_cli.training.degrade import DegradeConfig
    from mgfr_cli.model.profiles import profile_of

    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes())
    (tmp_path / "attributes.csv").write_text("file,Male,No_Beard,Blurry,Smiling\na.png,1,1,1,1\n")
    ds = FaceDataset(tmp_path, 1, 64, DegradeConfig(), PromptConfig(0.0, 0.0, 0.0, 0.0))
    trained = ds[0]["prompt"]
    restored = profile_of({"source": "mgfr"}).positive("man, no beard, smiling")
    assert trained == restored == "a high-quality photo of a man who has a clean-shaven face, a smile"
    assert "blurry" not in trained
    unprompted = FaceDataset(tmp_path, 1, 64, DegradeConfig(), PromptConfig(0.0, 1.0, 0.0, 0.0))[0]["prompt"]
    assert unprompted == profile_of({"source": "mgfr"}).positive(None)  # no empty prompt trained, none sampled


def test_horizontal_flip_of_target_and_reference(tmp_path):
    import cv2

    from mgfr_cli.training.data import FaceDataset, PromptConfig
    from mgfr_cli.training.degrade import DegradeConfig

    rng = np.random.default_rng(0)
    for ident in ("x", "y"):
        for i in range(2):
            (tmp_path / ident).mkdir(exist_ok=True)
            cv2.imwrite(str(tmp_path / ident / f"{i}.png"), (rng.random((64, 64, 3)) * 255).astype(np.uint8))
    mild = DegradeConfig(blur_prob=0.0, downsample=(1.0, 1.0), noise=(0.0, 0.0), jpeg=(100, 100))
    plain = FaceDataset(tmp_path, 2, 64, mild, PromptConfig(), hflip=0.0)
    flipped = FaceDataset(tmp_path, 2, 64, mild, PromptConfig(), hflip=1.0)
    for p in range(4):
        a, b = plain[p], flipped[p]
        assert torch.equal(b["hq"], a["hq"].flip(-1)) and torch.equal(b["ref"], a["ref"].flip(-1))
        assert b["flipped"] and b["ref_flipped"]
        # stage 2: the reference is another image of the same identity
        assert a["ref_identity"] == a["identity"] and a["ref_index"] != a["index"]
    some = FaceDataset(tmp_path, 2, 64, mild, PromptConfig(), hflip=0.5)
    drawn = [(some[p]["flipped"], some[p]["ref_flipped"]) for p in range(40)]
    assert any(f != r for f, r in drawn)  # independent draws


# -- the training objective ----------------------------------------------------------------------
def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"hq": torch.rand(2, 3, 128, 128, generator=g) * 2 - 1, "lq": torch.rand(2, 3, 128, 128, generator=g) * 2 - 1,
            "prompt": ["a photo", "another photo"], "position": torch.tensor([3, 4]), "index": torch.tensor([0, 1]),
            "target_is_hq": torch.tensor([True, True]), "flipped": torch.tensor([False, False])}


def test_v_prediction_base_trains_on_velocity():
    from diffusers import DDPMScheduler

    from helpers import tiny_adapter
    from mgfr_cli.training.train import _loss

    base = tiny_base()
    adapter = tiny_adapter(base)
    schedule = DDPMScheduler.from_config({**base.scheduler_config, "prediction_type": "v_prediction"})
    batch = _batch()
    seen = {}
    real_unet = base.unet.forward

    def spy(*a, **kw):
        out = real_unet(*a, **kw)
        seen["pred"] = out.sample.detach()
        return out

    base.unet.forward = spy
    scaling = base.vae.config.scaling_factor
    loss_v = _loss(batch, base, adapter, schedule, scaling, "v_prediction", torch.float32, torch.device("cpu"), 0)
    loss_e = _loss(batch, base, adapter, schedule, scaling, "epsilon", torch.float32, torch.device("cpu"), 0)
    # recompute both targets from the same seeded draws
    gens = [torch.Generator().manual_seed(0 * 1_000_003 + p) for p in (3, 4)]
    noise = torch.stack([torch.randn(4, 16, 16, generator=g) for g in gens])
    t = torch.stack([torch.randint(0, 1000, (1,), generator=g) for g in gens]).reshape(-1)
    with torch.no_grad():
        z0 = base.vae.encode(batch["hq"]).latent_dist.mode() * scaling
    velocity = schedule.get_velocity(z0, noise, t)
    pred = seen["pred"]
    assert torch.isclose(loss_v, ((pred - velocity) ** 2).mean(), rtol=1e-4)
    assert torch.isclose(loss_e, ((pred - noise) ** 2).mean(), rtol=1e-4)
    assert not torch.isclose(loss_v, loss_e, rtol=1e-2)


def test_gradient_checkpointing_and_bf16_training_step(tmp_path):
    """Checkpointing (adapter and frozen UNet) changes memory, not the gradient; a bf16 autocast step runs."""
    from diffusers import DDPMScheduler

    from helpers import tiny_adapter
    from mgfr_cli.training.train import _loss

    base = tiny_base()
    schedule = DDPMScheduler.from_config(base.scheduler_config)
    grads = []
    for checkpointing in (False, True):
        adapter = tiny_adapter(base)
        randomize_zero_paths(adapter)
        adapter.train()
        if checkpointing:
            adapter.enable_gradient_checkpointing()
            base.unet.enable_gradient_checkpointing()
        loss = _loss(_batch(), base, adapter, schedule, base.vae.config.scaling_factor, "epsilon", torch.float32,
                     torch.device("cpu"), 0)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in adapter.lca_down_zero.parameters()]))
    base.unet.disable_gradient_checkpointing()
    assert grads[0].norm() > 0 and (grads[0] - grads[1]).norm() < 1e-4 * grads[0].norm()
    adapter = tiny_adapter(base)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = _loss(_batch(), base.to("cpu", torch.bfloat16), adapter, schedule, base.vae.config.scaling_factor,
                     "epsilon", torch.bfloat16, torch.device("cpu"), 0)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in adapter.parameters())


def test_reference_drop_masks_the_reference_per_sample():
    from diffusers import DDPMScheduler

    from helpers import tiny_adapter
    from mgfr_cli.training.train import _loss

    base = tiny_base()
    adapter = tiny_adapter(base)
    randomize_zero_paths(adapter, scale=0.2)
    schedule = DDPMScheduler.from_config(base.scheduler_config)
    batch = {**_batch(), "ref": torch.rand(2, 3, 128, 128) * 2 - 1, "ref_index": torch.tensor([1, 0]),
             "ref_flipped": torch.tensor([False, False]), "id_embed": torch.zeros(2, 512), "has_id": torch.tensor([False, False])}
    no_ref = {k: v for k, v in batch.items() if k not in ("ref",)}
    args = (base, adapter, schedule, base.vae.config.scaling_factor, "epsilon", torch.float32, torch.device("cpu"), 0)
    with torch.no_grad():
        dropped = _loss(batch, *args, ref_drop=1.0)
        kept = _loss(batch, *args, ref_drop=0.0)
        without = _loss(no_ref, *args)
    assert torch.isclose(dropped, without, rtol=1e-6) and not torch.isclose(kept, without, rtol=1e-4)


def test_loss_scaler_state_is_checkpointed(tmp_path):
    """fp16 resume: the GradScaler's scale survives a checkpoint (saved in step.json, loaded on resume)."""
    import json
    from types import SimpleNamespace

    from diffusers.training_utils import EMAModel

    from mgfr_cli.training.checkpoints import load_state, write_checkpoint

    net = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(net.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ema = EMAModel(list(net.parameters()))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler._lazy_init_scale_growth_tracker(torch.device("cpu"))
    scaler.update(new_scale=123.0)

    class Adapter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def save_pretrained(self, folder, safe_serialization=True):
            folder.mkdir(parents=True, exist_ok=True)  # as diffusers' save_pretrained

    acc = SimpleNamespace(is_main_process=True, num_processes=1, scaler=scaler, wait_for_everyone=lambda: None)
    (tmp_path / "config.yaml").write_text("{}")
    write_checkpoint(acc, Adapter(), opt, sched, ema, tmp_path, 5)
    meta = json.loads((tmp_path / "checkpoints/step-5/step.json").read_text())
    assert meta["scaler"]["scale"] == 123.0
    fresh = torch.amp.GradScaler("cpu", init_scale=65536.0)
    step = load_state(tmp_path / "checkpoints/step-5", Adapter(), opt, sched, ema, SimpleNamespace(scaler=fresh))
    assert step == 5 and fresh.state_dict()["scale"] == 123.0


def test_single_file_base_loads_offline_as_epsilon(tmp_path, monkeypatch):
    """The single-file path hands diffusers a local SD 2.1 *base* config (epsilon, real CLIP tokenizer ids,
    SD 2's "!" padding) and never the hub. No real checkpoint exists offline: diffusers' converter itself is
    not exercised here."""
    import json

    from diffusers import StableDiffusionPipeline

    import mgfr_cli.model.base as base_module
    from mgfr_cli.errors import WeightsError

    seen = {}
    tiny = tiny_base()

    def fake(path, config=None, local_files_only=False, **kw):
        folder = __import__("pathlib").Path(config)
        seen.update(path=path, local=local_files_only,
                    scheduler=json.loads((folder / "scheduler" / "scheduler_config.json").read_text()),
                    unet=json.loads((folder / "unet" / "config.json").read_text()))
        from transformers import CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        seen["ids"] = tok("a photo of a cat", padding="max_length", max_length=9).input_ids
        from diffusers import DDIMScheduler

        return type("P", (), {"unet": tiny.unet, "vae": tiny.vae, "text_encoder": tiny.text_encoder, "tokenizer": tok,
                              "scheduler": DDIMScheduler.from_config(seen["scheduler"])})()

    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", staticmethod(fake))
    ckpt = tmp_path / "v2-1_512-ema-pruned.safetensors"
    ckpt.write_bytes(b"x")
    loaded = base_module.load_base(ckpt)
    assert seen["local"] and seen["scheduler"]["prediction_type"] == "epsilon"
    assert seen["unet"]["block_out_channels"] == [320, 640, 1280, 1280] and seen["unet"]["cross_attention_dim"] == 1024
    assert seen["ids"] == [49406, 320, 1125, 539, 320, 2368, 49407, 0, 0]  # CLIP's ids; "!" (0) pads, as in SD 2
    assert loaded.scheduler_config["prediction_type"] == "epsilon"
    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", staticmethod(lambda *a, **k: 1 / 0))
    with pytest.raises(WeightsError, match="cannot load as a single-file SD 2.1 base"):
        base_module.load_base(ckpt)


def test_fp16_vae_overflow_is_decoded_again_in_fp32_in_chunks():
    """The SD VAE can overflow in fp16: that chunk is decoded again in fp32 (values of an fp32 decode), the VAE
    is handed back in fp16, and decoding goes 8 latents at a time (the H100 check: 512 faces in one batch)."""
    import copy

    p = tiny_pipeline()
    vae32 = copy.deepcopy(p.base.vae).float()
    half = MgfrPipeline(p.base, p.adapter, dtype=torch.float16)
    z = torch.randn(10, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 10000  # overflows fp16 here
    sizes = []
    decode = half.base.vae.decode
    half.base.vae.decode = lambda x: (sizes.append(x.shape[0]), decode(x))[1]
    with torch.no_grad():
        assert not torch.isfinite(decode(z.half() / half.scaling).sample).all()  # the plain fp16 decode fails
        out = half.decode_latents(z.half())
        want = vae32.decode(z / half.scaling).sample.clamp(-1, 1)
    assert torch.isfinite(out).all() and out.dtype == torch.float16
    assert half.base.vae.dtype == torch.float16
    assert (out.float() - want).abs().max() < 0.01
    assert max(sizes) <= 8 and sum(sizes) >= 10


def test_compiled_denoiser_is_compiled_once_whatever_the_input_layout(monkeypatch, faces):
    """``--compile`` costs ~100 s per graph on an H100: inputs of another memory layout (the NHWC photo's
    latents, channels_last convolutions) must not compile a second one. Dynamo's guards are the same for
    every backend, so this counts compilations with the eager backend."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend=counter, dynamic=False))
    pipe = tiny_pipeline().optimize(compile=True, channels_last=True)
    ref = _face(faces[0][::-1])
    pipe.restore([faces[0]], [FaceConditions("brown eyes", references=(ref,))], FAST)
    assert counter.frame_count == 1
    # The same shapes, made another way (contiguous, as a benchmark or the web page might make them).
    r, b = pipe.resolution // 8, 1
    text = torch.randn(2 * b, 77, pipe.base.unet.config.cross_attention_dim)
    z = torch.randn(2 * b, 4, r, r)
    with torch.no_grad():
        refs = pipe.adapter.prepare_reference(z[:b], torch.randn(b, 1, 4, r, r), None, text[:b]).repeat(2)
        pipe._predict_fn(z[:b], torch.tensor(500), text, z, refs, 4.0, torch.zeros(b, 1, 1, 1))
    assert counter.frame_count == 1
    torch._dynamo.reset()
