import numpy as np
import pytest
import torch

from helpers import arcface_onnx, randomize_zero_paths, tiny_adapter, tiny_base, tiny_pipeline
from mgfr_cli.faces.conditions import FaceConditions
from mgfr_cli.faces.helper import AlignedFace
from mgfr_cli.model.pipeline import MgfrPipeline, RestoreSettings
from mgfr_cli.model.loading import load_adapter
from mgfr_cli.model.sampling import combine_guidance

FAST = RestoreSettings(steps=3)


@pytest.fixture(scope="module")
def base():
    return tiny_base()


def _inputs(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, 16, 16, generator=g)
    return x, torch.tensor(400), torch.randn(b, 77, 32, generator=g), torch.randn(b, 4, 16, 16, generator=g)


def _unet(base, x, t, text, res=None):
    kw = {} if res is None else dict(down_block_additional_residuals=res.down, mid_block_additional_residual=res.mid)
    return base.unet(x, t, encoder_hidden_states=text, **kw).sample


def test_untrained_adapter_changes_nothing_until_one_step(base):
    adapter = tiny_adapter(base)
    x, t, text, z_lq = _inputs()
    ref = adapter.prepare_reference(z_lq, torch.randn(2, 2, 4, 16, 16), torch.randn(2, 2, 512), text)
    with torch.no_grad():
        plain = _unet(base, x, t, text)
        assert torch.allclose(_unet(base, x, t, text, adapter(x, t, text, z_lq, ref)), plain, atol=1e-6)
    opt = torch.optim.AdamW(adapter.trainable_parameters(stage=1), lr=1e-3)
    loss = _unet(base, x, t, text, adapter(x, t, text, z_lq)).pow(2).mean()
    loss.backward()
    opt.step()
    with torch.no_grad():
        assert (_unet(base, x, t, text, adapter(x, t, text, z_lq)) - plain).abs().max() > 1e-4


def test_reference_path_matters_once_its_weights_are_non_zero(base):
    adapter = tiny_adapter(base)
    randomize_zero_paths(adapter)
    x, t, text, z_lq = _inputs()
    with torch.no_grad():
        without = adapter(x, t, text, z_lq).mid
        one = adapter(x, t, text, z_lq, adapter.prepare_reference(z_lq, torch.randn(2, 1, 4, 16, 16), None, text)).mid
        three = adapter(x, t, text, z_lq, adapter.prepare_reference(
            z_lq, torch.randn(2, 3, 4, 16, 16), torch.randn(2, 3, 512), text)).mid
    assert (one - without).abs().max() > 1e-4 and (three - one).abs().max() > 1e-4
    # padding a face's references with masked slots changes nothing
    refs = torch.randn(2, 1, 4, 16, 16)
    padded = torch.cat([refs, torch.randn(2, 2, 4, 16, 16)], dim=1)
    mask = torch.tensor([[1.0, 0, 0], [1.0, 0, 0]])
    with torch.no_grad():
        a = adapter(x, t, text, z_lq, adapter.prepare_reference(z_lq, refs, None, text)).mid
        b = adapter(x, t, text, z_lq, adapter.prepare_reference(z_lq, padded, None, text, mask)).mid
    assert torch.allclose(a, b, atol=1e-5)


def test_guidance_formula_matches_a_hand_computation():
    c, nq, na = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.0]), torch.tensor([3.0, 0.0])
    # by hand: c + 2 (c - nq) + 0.5 (c - na) = [1 + 1 - 1, 2 + 2 + 1]
    assert torch.equal(combine_guidance(c, nq, na, 2.0, 0.5), torch.tensor([1.0, 5.0]))
    assert torch.equal(combine_guidance(c, nq, None, 2.0, 0.5), torch.tensor([2.0, 4.0]))


def _faces(astronaut):
    crop = np.ascontiguousarray(astronaut[:512, :512])
    ref = AlignedFace(crop=crop[::-1].copy(), landmarks=np.zeros((5, 2)), affine=np.eye(2, 3), index=0)
    return crop, ref


def test_batched_equals_separate_and_same_seed_same_output(astronaut):
    pipe = tiny_pipeline()
    randomize_zero_paths(pipe.adapter)
    crop, ref = _faces(astronaut)
    conds = [FaceConditions("brown eyes", "eyeglasses", (ref,)), FaceConditions(None, None, ()),
             FaceConditions("beard", None, (ref, ref, ref))]
    crops = [crop, crop[:, ::-1].copy(), crop]
    together = pipe.restore(crops, conds, FAST, seeds=[0, 1, 2]).images
    for i in range(3):
        alone = pipe.restore([crops[i]], [conds[i]], FAST, seeds=[i]).images[0]
        assert np.abs(alone.astype(int) - together[i].astype(int)).max() <= 2
    again = pipe.restore(crops, conds, FAST, seeds=[0, 1, 2]).images
    assert all(np.array_equal(a, b) for a, b in zip(together, again))
    other_seed = pipe.restore(crops[:1], conds[:1], FAST, seeds=[7]).images[0]
    assert np.abs(other_seed.astype(int) - together[0].astype(int)).mean() > 1


def test_references_and_prompts_change_the_output(astronaut):
    pipe = tiny_pipeline()
    randomize_zero_paths(pipe.adapter)
    crop, ref = _faces(astronaut)
    plain = pipe.restore([crop], [FaceConditions()], FAST).images[0].astype(int)
    with_ref = pipe.restore([crop], [FaceConditions(references=(ref,))], FAST).images[0].astype(int)
    with_prompt = pipe.restore([crop], [FaceConditions("blue eyes")], FAST).images[0].astype(int)
    assert np.abs(with_ref - plain).mean() > 0.5
    assert np.abs(with_prompt - plain).mean() > 0.5


def test_save_load_same_output(tmp_path, astronaut):
    pipe = tiny_pipeline()
    randomize_zero_paths(pipe.adapter)
    pipe.adapter.save_pretrained(tmp_path / "adapter")
    loaded = load_adapter(tmp_path / "adapter", pipe.base.unet)
    for a, b in zip(pipe.adapter.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    crop, ref = _faces(astronaut)
    conds = [FaceConditions("brown eyes", None, (ref,))]
    again = MgfrPipeline(pipe.base, loaded).restore([crop], conds, FAST).images[0]
    assert np.array_equal(pipe.restore([crop], conds, FAST).images[0], again)


def test_identity_embedding_runs_with_references(tmp_path, astronaut):
    from mgfr_cli.faces.identity import IdentityEncoder

    enc = IdentityEncoder(arcface_onnx(tmp_path / "arc.onnx"))
    crop, ref = _faces(astronaut)
    e = enc.embed([crop, ref.crop])
    assert e.shape == (2, 512) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    pipe = tiny_pipeline(identity=enc)
    randomize_zero_paths(pipe.adapter)
    out = pipe.restore([crop], [FaceConditions(references=(ref, ref, ref))], FAST).images[0]
    assert out.shape == crop.shape


def test_ddim_and_colour_fix_options(astronaut):
    pipe = tiny_pipeline()
    crop, _ = _faces(astronaut)
    for settings in (RestoreSettings(steps=2, scheduler="ddim", color_fix="adain"),
                     RestoreSettings(steps=2, color_fix="none")):
        assert pipe.restore([crop], [FaceConditions()], settings).images[0].shape == crop.shape


def test_mismatched_or_missing_adapter_files_name_the_problem(tmp_path):
    from mgfr_cli.errors import WeightsError
    from mgfr_cli.model.loading import find_adapter_dir

    pipe = tiny_pipeline()
    pipe.adapter.save_pretrained(tmp_path / "adapter")

    class OtherUnet:  # a base whose encoder is wider than the one the adapter was trained on
        config = {**pipe.base.unet.config, "block_out_channels": [64, 128]}

    with pytest.raises(WeightsError, match=r"block_out_channels=\[32, 64\] does not fit the base UNet's block_out_channels=\[64, 128\]"):
        load_adapter(tmp_path / "adapter", OtherUnet())
    (tmp_path / "adapter" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsError, match="missing diffusion_pytorch_model.safetensors"):
        load_adapter(tmp_path / "adapter")
    with pytest.raises(WeightsError, match="no adapter checkpoint there"):
        find_adapter_dir(tmp_path / "nothing")
