import pytest

from mgfr_cli.faces.conditions import ConditionSpec, expand_refs, read_reference, read_sidecar, resolve_specs
from mgfr_cli.errors import ConfigError, InputError


def _photo(tmp_path):
    p = tmp_path / "photo.jpg"
    p.write_bytes(b"x")
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "a.jpg").write_bytes(b"x")
    (tmp_path / "refs" / "b.png").write_bytes(b"x")
    return p


def test_precedence_flag_over_face_over_photo_over_folder(tmp_path):
    photo = _photo(tmp_path)
    (tmp_path / "mgfr.yaml").write_text("prompt: folder words\nnegative_prompt: folder negative\nrefs: [refs]\n")
    (tmp_path / "photo.yaml").write_text("prompt: photo words\nfaces:\n  1: {prompt: face one words}\n")
    specs = resolve_specs(photo, ConditionSpec(), 2)
    assert specs[0].prompt == "photo words" and specs[1].prompt == "face one words"
    assert specs[0].negative_prompt == "folder negative"  # each key resolved on its own
    assert specs[0].refs == (tmp_path / "refs",)  # relative to the YAML's folder
    flagged = resolve_specs(photo, ConditionSpec(prompt="flag words"), 2)
    assert [s.prompt for s in flagged] == ["flag words", "flag words"]
    assert flagged[0].negative_prompt == "folder negative"


def test_no_yaml_means_defaults(tmp_path):
    assert resolve_specs(_photo(tmp_path), ConditionSpec(), 1) == [ConditionSpec()]


@pytest.mark.parametrize("text,message", [
    ("prompt: [1, 2]\n", "key 'prompt' must be text"),
    ("promt: brown eyes\n", "unknown key 'promt'"),
    ("refs: [nowhere.jpg]\n", "nowhere.jpg: not found"),
    ("faces:\n  x: {prompt: a}\n", "is not a face index"),
    ("faces:\n  0: {colour: red}\n", "faces.0: unknown key 'colour'"),
    ("faces:\n  0: {prompt: a}\ntracks:\n  0: {prompt: b}\n", "'faces' and 'tracks' name the same people"),
    ("prompt: 'unterminated\n", "malformed YAML"),
    ("- just\n- a list\n", "expected a mapping"),
    # a key twice: YAML keeps the last, the first was dropped without a word
    ("prompt: brown eyes\nprompt: blue eyes\n", r"key 'prompt' given twice \(lines 1 and 2\)"),
    ("faces:\n  0: {prompt: a}\n  0: {prompt: b}\n", r"line 3 .*key 0 given twice"),
    ("{prompt: a, prompt: b}\n", r"key 'prompt' given twice \(line 1\)"),
])
def test_invalid_sidecars_name_file_and_key(tmp_path, text, message):
    photo = _photo(tmp_path)
    (tmp_path / "photo.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        resolve_specs(photo, ConditionSpec(), 1)
    assert "photo.yaml" in str(info.value)


def test_a_yaml_merge_may_override_a_key(tmp_path):
    from mgfr_cli.configs import read_yaml

    (tmp_path / "c.yaml").write_text("base: &b {lr: 1, bs: 2}\nrun:\n  <<: *b\n  lr: 3\n")
    assert read_yaml(tmp_path / "c.yaml")["run"] == {"lr": 3, "bs": 2}


def test_face_override_for_a_face_that_does_not_exist(tmp_path):
    photo = _photo(tmp_path)
    (tmp_path / "photo.yaml").write_text("faces:\n  3: {prompt: a}\n")
    with pytest.raises(ConfigError, match=r"key 'faces': face 3 does not exist \(the photo has 2 faces, .* left to right"):
        resolve_specs(photo, ConditionSpec(), 2)
    (tmp_path / "clip.mp4").write_bytes(b"x")  # a clip's people are tracks, and said so (it read "the photo has")
    (tmp_path / "clip.yaml").write_text("tracks:\n  3: {prompt: a}\n")
    with pytest.raises(ConfigError, match=r"key 'tracks': track 3 does not exist \(the clip has 1 track, .* first appear"):
        resolve_specs(tmp_path / "clip.mp4", ConditionSpec(), 1)


def test_folder_yaml_may_not_hold_faces(tmp_path):
    (tmp_path / "mgfr.yaml").write_text("faces: {0: {prompt: a}}\n")
    with pytest.raises(ConfigError, match="unknown key 'faces'"):
        read_sidecar(tmp_path / "mgfr.yaml", allow_faces=False)


def test_expand_refs(tmp_path):
    _photo(tmp_path)
    assert [p.name for p in expand_refs((tmp_path / "refs",))] == ["a.jpg", "b.png"]
    with pytest.raises(InputError, match="missing.jpg: not found"):
        expand_refs((tmp_path / "missing.jpg",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        expand_refs((tmp_path / "empty",))


def test_a_reference_that_is_no_photo_is_named_as_the_reference(tmp_path):
    """A clip or a text file given as a reference failed as "<file>: not a readable image" (which file of the photo's
    was it?); named as the reference now, a clip said to be one."""
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 64)
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(InputError, match=r"^reference .*clip.mp4: a clip, not a photo"):
        read_reference(tmp_path / "clip.mp4")
    with pytest.raises(InputError, match=r"^reference .*notes.jpg: not a readable image$"):
        read_reference(tmp_path / "notes.jpg")


def test_yaml_settings_the_flags_replace_are_said_after_the_run(tiny_root, astronaut, tmp_path, cli):
    """Flags win over sidecars (the precedence above); the sidecar's settings they replace are named once."""
    import cv2
    import numpy as np

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b", "c"):
        cv2.imwrite(str(folder / f"{name}.png"), np.ascontiguousarray(astronaut[:256, 100:356, ::-1]))
    (folder / "a.yaml").write_text("prompt: blue eyes\n")
    (folder / "b.yaml").write_text("faces: {0: {prompt: green eyes}}\nnegative_prompt: glasses\n")
    (folder / "c.yaml").write_text("prompt: brown eyes\n")  # what the flag says: nothing lost, nothing said
    (folder / "mgfr.yaml").write_text("refs: []\n")
    code, out, err = cli("restore", folder, "-o", tmp_path / "out", "--prompt", "brown eyes", "--model-root",
                         tiny_root, "--steps", "1", "--detector", "retinaface_mobile0.25", "--device", "cpu")
    text = " ".join(err.split())
    assert code == 0, out + err
    assert (f"note: --prompt: used instead of the prompt in 2 YAML file(s) ({folder / 'a.yaml'}, {folder / 'b.yaml'})"
            in text), text
    assert text.count("used instead of") == 1  # negative_prompt and refs: no flag replaced them


def test_same_photo_is_the_same_file_by_any_path_or_a_byte_copy(tmp_path):
    """What a references folder leaves out for the photo being restored: the photo by another spelling, a link or
    a hard link to it, or a copy of its bytes; not another photo of the same size, nor a missing file."""
    from mgfr_cli.faces.io import same_photo

    (tmp_path / "sub").mkdir()
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"\xff\xd8" + bytes(range(256)) * 4)
    (tmp_path / "copy.jpg").write_bytes(photo.read_bytes())
    (tmp_path / "other.jpg").write_bytes(b"\xff\xd8" + bytes(range(255, -1, -1)) * 4)
    (tmp_path / "link.jpg").symlink_to(photo)
    (tmp_path / "hard.jpg").hardlink_to(photo)
    for same in (tmp_path / "sub" / ".." / "a.jpg", tmp_path / "link.jpg", tmp_path / "hard.jpg", tmp_path / "copy.jpg"):
        assert same_photo(same, photo), same
    assert not same_photo(tmp_path / "other.jpg", photo) and not same_photo(tmp_path / "gone.jpg", photo)
