"""DiffBIR's published face recipe, reproduced: every stage against a golden file made by DiffBIR's own code.

``diffbir_e2e`` (see its README) holds tiny random-weight models of the real architectures in the formats users
have on disk, the noise DiffBIR's sampler drew and DiffBIR's intermediate and final results for two cases. The
models are loaded through mgfr's real loaders (the base folder, ``weights convert diffbir``, the cleaner by its
manifest file name in the model root); the noise is not injected: ``--seed 231`` on the CPU draws it.
"""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from helpers import FIXTURES
from mgfr_cli.faces.conditions import FaceConditions
from mgfr_cli.model.pipeline import RestoreSettings

E2E = FIXTURES / "diffbir_e2e"
CONTROLNET = FIXTURES / "diffbir" / "diffbir_tiny_golden.safetensors"
CASES = {"case_noise": ("", "noise"), "case_prompt": ("a photo of a smiling man with glasses", "cond")}


@pytest.fixture(scope="module")
def golden():
    return load_file(E2E / "golden.safetensors")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A model root as a user has it: the face cleaner under its manifest file name, the ControlNet converted."""
    from mgfr_cli.weights.convert import convert_diffbir
    from mgfr_cli.weights.provision import base_unet_config

    root = tmp_path_factory.mktemp("diffbir-root")
    shutil.copy(E2E / "tiny_models" / "face_swinir_v1.ckpt", root / "face_swinir_v1.ckpt")
    state = {k[len("diffbir."):]: v for k, v in load_file(CONTROLNET).items() if k.startswith("diffbir.")}
    torch.save(state, root / "v2.pth")
    convert_diffbir(root / "v2.pth", root / "diffbir-v2-lca", source="diffbir-v2",
                    unet_config=base_unet_config(root, E2E / "tiny_models" / "sd21-base"), model_root=root)
    return root


@pytest.fixture(scope="module")
def pipeline(root):
    from mgfr_cli.model.loading import build_pipeline

    torch.set_num_threads(2)
    return build_pipeline(E2E / "tiny_models" / "sd21-base", root / "diffbir-v2-lca", identity_path=None,
                          device="cpu", dtype=torch.float32, cleaner_path=root / "face_swinir_v1.ckpt")


def _levels(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    d = np.abs(a.astype(int) - b.astype(int))
    return int(d.max()), float((d > 0).mean())


def test_the_recipe_is_the_default_of_a_diffbir_adapter(root, pipeline):
    from mgfr_cli.weights.files import load_manifest
    from mgfr_cli.weights.provision import plan_restore

    prof = pipeline.profile
    assert (prof.default_scheduler, prof.default_steps, prof.default_guidance) == ("ddpm", 50, 3.0)
    assert prof.diffbir_output and prof.positive(None) == ""
    plan = plan_restore(root, load_manifest(), detector=None, base=E2E / "tiny_models" / "sd21-base", checkpoint=None,
                        cleaner="auto", bg_upsampler="none", upscale=1.0)
    assert plan.cleaner == root / "face_swinir_v1.ckpt" and not plan.missing  # DiffBIR's face cleaner


def test_spaced_timesteps_follow_diffbirs_rounding():
    from mgfr_cli.model.sampling import spaced_timesteps

    assert spaced_timesteps(4) == [999, 666, 333, 0]
    assert spaced_timesteps(50)[:4] == [999, 979, 958, 938] and spaced_timesteps(50)[-1] == 0
    # 21 steps: the accumulated stride rounds 549.45 and 649.35 differently than a plain linspace would
    linspace = sorted({int(v) for v in np.round(np.linspace(0, 999, 21))}, reverse=True)
    assert spaced_timesteps(21) != linspace and len(spaced_timesteps(21)) == 21


def test_seed_231_draws_diffbirs_noise_in_diffbirs_order(golden):
    g = torch.Generator().manual_seed(231)
    draws = [torch.randn((1, 4, 64, 64), generator=g) for _ in range(5)]
    assert torch.equal(draws[0], golden["case_noise.noise_x_T"])
    assert all(torch.equal(draws[i + 1], golden["case_noise.noise_steps"][i]) for i in range(4))


def test_cleaner_and_condition_latent(golden, pipeline):
    lq = pipeline.to_tensor([golden["common.lq"].numpy()])
    cleaned = pipeline.cleaner(lq)
    assert (cleaned.max() > 1) and (cleaned.min() < -1)  # not clamped: DiffBIR's cleaner output leaves [0, 1]
    assert torch.allclose((cleaned + 1) / 2, golden["common.cleaned"].float(), atol=2e-3, rtol=0)  # stored in fp16
    z = pipeline.encode_images(cleaned)
    assert torch.allclose(z, golden["case_noise.cond_latent"], atol=1e-4, rtol=0)


def test_decode_colour_fix_and_quantisation(golden, pipeline):
    from mgfr_cli.model.colorfix import color_fix, to_uint8

    case = "case_noise"
    decoded = pipeline.decode_latents(golden[f"{case}.final_latent"], clamp=False)
    assert (decoded.abs() > 1).any()  # not clamped
    # decoded, colorfixed and cleaned are stored in fp16 (tests/fixtures/diffbir_e2e/README.md): within 2e-3
    assert torch.allclose(decoded, golden[f"{case}.decoded"].float(), atol=2e-3, rtol=0)
    fixed = color_fix((decoded + 1) / 2, golden["common.cleaned"].float(), "wavelet")
    assert torch.allclose(fixed, golden[f"{case}.colorfixed"].float(), atol=2e-3, rtol=0)
    assert to_uint8(torch.tensor([[[[0.999]]]]), truncate=True).item() == 254  # truncation, not rounding
    cleaned = golden["common.cleaned"].float() * 2 - 1
    whole = pipeline.finish(golden[f"{case}.final_latent"], cleaned, [512], "wavelet")[0]
    worst, share = _levels(whole, golden[f"{case}.output"].numpy())
    assert worst <= 1 and share <= 0.001
    # an aligned input of 256: DiffBIR resizes the unclamped colour-fixed face to it, then clamps and truncates
    small = pipeline.finish(golden[f"{case}.final_latent"], cleaned, [256], "wavelet")[0]
    theirs = F.interpolate(golden[f"{case}.colorfixed"].float(), size=(256, 256), mode="bicubic", antialias=True)
    theirs = (theirs * 255).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    worst, share = _levels(small, theirs)  # colorfixed is stored in fp16: truncation flips on ~1% of values
    assert small.shape == (256, 256, 3) and worst <= 1 and share <= 0.02, (worst, share)


def test_restore_reproduces_diffbir_step_by_step(golden, pipeline):
    case = "case_noise"  # the command-line test below checks both cases' outputs
    prompt, start = CASES[case]
    seen = []
    settings = RestoreSettings(steps=4, scheduler="ddpm", guidance_quality=3.0, seed=231, start_from=start)
    out = pipeline.restore([golden["common.lq"].numpy()], [FaceConditions(prompt or None, None, ())], settings,
                           seeds=[231], callback=lambda i, t, x: seen.append(x.clone())).images[0]
    for i, latents in enumerate(seen):
        assert torch.allclose(latents, golden[f"{case}.latents"][i], atol=1e-3, rtol=0), f"step {i}"
    assert torch.allclose(seen[-1], golden[f"{case}.final_latent"], atol=1e-3, rtol=0)
    worst, share = _levels(out, golden[f"{case}.output"].numpy())
    assert worst <= 1 and share <= 0.001, (worst, share)


def test_each_face_draws_its_own_noise_whatever_the_batch():
    """The ancestral sampler's per-step noise comes from each face's own generator: the same face, alone or
    second in a batch, takes the same path (a model that mixes nothing between faces stands in for the UNet)."""
    from mgfr_cli.model.sampling import denoise, make_scheduler, set_steps

    config = json.loads((E2E / "tiny_models" / "sd21-base" / "scheduler" / "scheduler_config.json").read_text())

    def run(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        x = torch.cat([torch.randn((1, 4, 8, 8), generator=g) for g in gens])
        sched = make_scheduler("ddpm", config)
        set_steps(sched, "ddpm", 5, "cpu")
        return denoise(lambda z, t: 0.5 * z, x, sched, generator=gens)

    alone, batch = run([7]), run([3, 7])
    assert torch.equal(alone[0], batch[1]) and not torch.equal(batch[0], batch[1])


def test_an_aligned_face_under_512_is_restored_as_given(root, pipeline, golden, tmp_path, cli):
    """`--has-aligned` hands a square face of another size to the pipeline as it is: resized to 512 and back in
    float (DiffBIR's order: its output is resized before the clamp), not rounded to a 512 crop first (which moved
    1.8% of values by up to 22 grey levels against DiffBIR's own code, benchmarks/RESULTS.md)."""
    from mgfr_cli.faces.helper import resize_face

    face = resize_face(golden["common.lq"].numpy(), (256, 256))
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), np.ascontiguousarray(face[..., ::-1]))
    code, out, err = cli("restore", path, "-o", tmp_path / "out", "--has-aligned", "--steps", "2", "--seed", "231",
                         "--device", "cpu", "--base", E2E / "tiny_models" / "sd21-base", "--model-root", root)
    assert code == 0, out + err
    written = cv2.imread(str(tmp_path / "out" / "face.png"))[..., ::-1]
    settings = RestoreSettings(steps=2, scheduler="ddpm", guidance_quality=3.0, seed=231)
    direct = pipeline.restore([face], [FaceConditions()], settings, seeds=[231]).images[0]
    assert direct.shape == (256, 256, 3) and np.array_equal(written, direct)


@pytest.mark.parametrize("case", list(CASES))
def test_the_command_line_gives_diffbirs_face(golden, root, tmp_path, cli, case):
    prompt, start = CASES[case]
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), np.ascontiguousarray(golden["common.lq"].numpy()[..., ::-1]))
    args = ["restore", face, "-o", tmp_path / "out", "--has-aligned", "--steps", "4", "--seed", "231", "--device", "cpu",
            "--base", E2E / "tiny_models" / "sd21-base", "--model-root", root]
    if prompt:
        args += ["--prompt", prompt, "--start-from", start]
    code, out, err = cli(*args)
    assert code == 0, out + err
    restored = cv2.imread(str(tmp_path / "out" / "face.png"))[..., ::-1]
    worst, share = _levels(restored, golden[f"{case}.output"].numpy())
    assert worst <= 1 and share <= 0.001, (worst, share)
    summary = json.loads((tmp_path / "out" / "mgfr-summary.json").read_text())
    assert summary[0]["status"] == "restored" and Path(summary[0]["output"]).name == "face.png"
