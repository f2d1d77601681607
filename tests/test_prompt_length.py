"""A prompt longer than the text encoder reads (CLIP: 77 tokens) is cut there. The words cut are said once per run,
wherever the prompt came from (a flag, a sidecar, the API, the web page), and training says which captions it cuts:
a user's words are never dropped without a word."""

import cv2
import numpy as np
import pytest
import torch

WORDS = "red blue green brown black white gray dark light small large young old happy round long".split()


def _long(n: int, start: int = 0) -> str:
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(n))


@pytest.fixture(scope="module")
def base():
    from helpers import tiny_base

    return tiny_base()


def test_the_words_said_cut_are_the_words_the_text_encoder_does_not_read(base):
    """Checked against the encoder itself: changing any word said cut leaves its states as they were, changing the
    word before them does not; with one-token words the cut is after exactly 75 (77 less the start and end marks)."""
    assert all(len(base.tokenizer(w).input_ids) == 3 for w in WORDS)  # one token each
    text = _long(120)
    cut = base.cut_words(text)
    words = text.split()
    kept = len(words) - len(cut.split())
    assert kept == 75 and cut == " ".join(words[75:])

    def states(ws):
        with torch.no_grad():
            return base.encode_text([" ".join(ws)], "cpu")[0]

    other = ["happy" if w != "happy" else "sad" for w in words]
    assert torch.equal(states(words), states(words[:kept] + other[kept:]))  # the cut words: never read
    assert not torch.equal(states(words), states(words[:kept - 1] + other[kept - 1:]))  # the last kept one: read
    assert base.cut_words(_long(75)) == "" and base.cut_words("brown eyes") == ""
    # cut inside a word: from its first token not read ("high-quality" is three: high, -, quality), as written
    assert base.cut_words(_long(74) + " High-Quality eyes") == "-Quality eyes"
    # a prompt without spaces (as Stable Diffusion users write them): the same, checked against the encoder
    tight = ",".join(WORDS * 8)
    cut = base.cut_words(tight)
    read = tight[: len(tight) - len(cut)]
    assert read.endswith(",") and len(base.tokenizer(read).input_ids) == 78  # 75 read, this comma the 76th
    with torch.no_grad():
        assert torch.equal(base.encode_text([tight], "cpu"), base.encode_text([read + "sad,happy,old,red"], "cpu"))


def test_a_tokenizer_without_offsets_says_the_tokens_it_cuts(base, monkeypatch):
    monkeypatch.setattr(type(base.tokenizer), "is_fast", property(lambda self: False))
    text = _long(120)
    assert base.cut_words(text) == " ".join(text.split()[75:]) and base.cut_words(_long(75)) == ""


def _unread(prompt: str) -> str:
    """The words of a prompt of one-token words past 75 tokens, its sentence's (MGFR adapters') counted."""
    from helpers import clip_tokenizer

    around = len(clip_tokenizer()("a high-quality photo of a person who has").input_ids) - 2
    return " ".join(prompt.split()[75 - around:])


def _photo(path, astronaut):
    cv2.imwrite(str(path), np.ascontiguousarray(astronaut[:256, 100:356, ::-1]))


def test_restore_says_each_cut_prompt_once_from_flags_and_sidecars(tiny_root, astronaut, tmp_path, cli):
    """--prompt too long for two photos: said once, naming its lost words; a sidecar's negative prompt too long:
    said as the negative prompt's; a prompt that fits: nothing said of it."""
    photos = tmp_path / "in"
    photos.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        _photo(photos / name, astronaut)
    (photos / "c.yaml").write_text(f"prompt: brown eyes\nnegative_prompt: {_long(90, 3)}\n")
    flag = _long(100)
    code, _, err = cli("restore", photos, "-o", tmp_path / "out", "--model-root", tiny_root, "--steps", "1",
                       "--detector", "retinaface_mobile0.25", "--device", "cpu", "--prompt", flag)
    assert code == 0, err
    err = " ".join(err.split())
    said = [line for line in err.split("note: ") if "longer than the text encoder reads" in line]
    assert len(said) == 2, err
    prompt_words = _unread(flag)
    assert f"prompt longer than the text encoder reads (77 tokens, the sentence mgfr puts around it included): " \
           f"not used: '{prompt_words}'" in said[0] + said[1]
    assert "negative prompt longer than the text encoder reads" in said[0] + said[1]
    assert "brown eyes" not in err


def test_the_api_and_the_web_page_say_it(tiny_root, astronaut, tmp_path, monkeypatch):
    from mgfr_cli import Restorer
    from mgfr_cli.app.ui import restore_one, load_models

    _photo(tmp_path / "p.png", astronaut)
    restorer = Restorer.load(tiny_root, detector="retinaface_mobile0.25", device="cpu")
    notes = restorer.restore(tmp_path / "p.png", prompt=_long(100), steps=1).notes
    assert [n for n in notes if f"not used: '{_unread(_long(100))}' (shorten it)" in n], notes
    assert restorer.restore(tmp_path / "p.png", prompt="brown eyes", steps=1).notes == []  # said for its run only
    models = load_models(tiny_root, detector="retinaface_mobile0.25", base=None, checkpoint=None, cleaner="auto",
                         bg_upsampler="none", device="cpu", precision="auto", max_megapixels=100)
    *_, status = restore_one(models, str(tmp_path / "p.png"), None, _long(100), "", 4.0, 2.0, 1, 0, "every face",
                             "wavelet", 1, True, tmp_path / "w")
    assert "**Cut:** prompt longer than the text encoder reads" in status, status
    assert f"not used: '{_unread(_long(100))}' (shorten it)" in status, status


def test_training_says_which_captions_it_cuts(tmp_path, base, capsys):
    """An image labelled with more attributes than the text encoder reads: said before training, with how many and
    an example's lost words; labels that fit: nothing said."""
    import json

    from mgfr_cli.training.data import FaceDataset, PromptConfig
    from mgfr_cli.training.train import train
    from test_train import MILD, _cfg

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        cv2.imwrite(str(data / f"face{i}.png"), np.full((64, 64, 3), 40 * i, np.uint8))
    labels = {"face0.png": ["Smiling"], "face1.png": WORDS * 6, "face2.png": WORDS[:3]}
    (data / "attributes.json").write_text(json.dumps(labels))
    ds = FaceDataset(data, 1, 128, MILD, PromptConfig())
    notes = ds.long_captions(base)
    assert len(notes) == 1 and notes[0].startswith("1 of 3 image(s) have a caption longer than the text encoder "
                                                   "reads (77 tokens)"), notes
    # counted by hand: the sentence takes 10 tokens, a label and its comma 2 ("a young face," 4): the first 16 labels
    # take 34, the next 13 take 30: 75 with the start mark; "round" is the 76th, the end mark the 77th
    assert "(e.g. face1.png: 'long, red, blue, green," in notes[0], notes
    assert notes[0].endswith("happy, round, long'); give fewer labels per image"), notes
    base.save(tmp_path / "base")
    train(_cfg(stage=1, max_steps=1), base_path=tmp_path / "base", data_dir=data, run_dir=tmp_path / "run")
    assert f"note: {notes[0]}" in " ".join(capsys.readouterr().out.split())  # said by the run, before its first step
    labels["face1.png"] = WORDS[:5]
    (data / "attributes.json").write_text(json.dumps(labels))
    assert FaceDataset(data, 1, 128, MILD, PromptConfig()).long_captions(base) == []


def test_a_diffbir_adapter_is_not_said_to_wrap_the_prompt():
    """A DiffBIR adapter takes the prompt as written (75 of the user's tokens): its note names no sentence around it."""
    from types import SimpleNamespace

    from mgfr_cli.model.prompts import cut_notes

    def restorer(plain):
        profile = SimpleNamespace(plain_prompts=plain)
        return SimpleNamespace(pipeline=SimpleNamespace(profile=profile, base=SimpleNamespace(text_length=lambda: 77)),
                               cut={("negative prompt", "round long"): None})

    assert cut_notes(restorer(True)) == ["negative prompt longer than the text encoder reads (77 tokens): not used: "
                                         "'round long' (shorten it)"]
    assert "the sentence mgfr puts around it included" in cut_notes(restorer(False))[0]
