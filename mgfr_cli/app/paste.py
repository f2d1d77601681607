"""The photo made again around its restored faces: the background resized by ``--upscale`` (Real-ESRGAN when an
upsampler applies, else Lanczos), the faces pasted where the resize put their pixels, in the photo's own form
(gray, alpha, 16 bit kept). Photos, clip frames and the Python API all go through :func:`paste_back`."""

from __future__ import annotations

import numpy as np

from mgfr_cli.faces.helper import AlignedFace, FaceHelper
from mgfr_cli.faces.io import Photo


def paste_back(helper: FaceHelper, upsampler, photo, faces: list[AlignedFace], restored: list[np.ndarray],
               upscale: float = 1.0, face_upsample: bool = False) -> np.ndarray:
    """The photo (a :class:`Photo` or an RGB array) resized by ``upscale`` (Real-ESRGAN when ``upsampler``, else
    Lanczos) with the restored faces pasted back, in the photo's own form (gray, alpha, 16 bit kept).
    ``face_upsample`` (CodeFormer's ``--face_upsample``): a face that the output shows larger than its restored
    crop is enlarged by ``upsampler`` to its size there first, instead of being stretched by the paste."""
    import cv2

    photo = photo if isinstance(photo, Photo) else Photo(photo)
    bg, size = photo.pixels, (round(photo.width * upscale), round(photo.height * upscale))
    if upsampler is not None and upsampler.applies(upscale):  # by name: at every scale (GFPGAN's, CodeFormer's)
        bg = upscaled_like(photo, upsampler(photo.rgb8(), size), size)
    elif upscale != 1.0:
        bg = cv2.resize(bg, size, interpolation=cv2.INTER_LANCZOS4)
    scale = (size[0] / photo.width, size[1] / photo.height)
    if face_upsample and upsampler is not None:
        restored = [enlarged(upsampler, f, r, max(scale)) for f, r in zip(faces, restored)]
    return helper.paste(bg, faces, restored, scale)


MAX_FACE_UPSAMPLE = 4.0  # a crop is enlarged at most 4x (2048 px): memory stays bounded for any --upscale


def enlarged(upsampler, face: AlignedFace, crop: np.ndarray, upscale: float) -> np.ndarray:
    """``crop`` enlarged by ``upsampler`` to the size the face has in the output (its crop-to-photo scale times
    ``upscale``), at most :data:`MAX_FACE_UPSAMPLE` times; unchanged where the output shows it no larger."""
    k = min(upscale / float(np.sqrt(abs(np.linalg.det(face.affine[:, :2])))), MAX_FACE_UPSAMPLE)
    if k <= 1.0:
        return crop
    n = round(crop.shape[0] * k)
    return upsampler(crop, (n, n))


def in_photo_form(photo: Photo, rgb8: np.ndarray) -> np.ndarray:
    """An RGB uint8 image in the photo's own form: gray stays gray, alpha kept, 16 bit kept."""
    px = rgb8.astype(np.float32)
    if photo.pixels.dtype == np.uint16:
        px = px * 257.0
    if photo.is_gray:
        px = px @ np.array([0.299, 0.587, 0.114], np.float32)
    out = np.clip(np.rint(px), 0, photo.max_value).astype(photo.pixels.dtype)
    if photo.has_alpha:
        out = np.concatenate([out, photo.pixels[:, :, 3:]], axis=2)
    return out


def upscaled_like(photo: Photo, rgb8: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The upsampler's 8-bit RGB in the photo's form; alpha resized alongside (the upsampler sees RGB only)."""
    import cv2

    if not photo.has_alpha:
        return in_photo_form(photo, rgb8)
    alpha = cv2.resize(photo.pixels[:, :, 3], size, interpolation=cv2.INTER_LANCZOS4)
    frame = np.concatenate([np.zeros(alpha.shape + (3,), alpha.dtype), alpha[:, :, None]], axis=2)
    return in_photo_form(Photo(frame), rgb8)


def face_upsample_unused(upsampler, has_aligned: bool) -> str:
    """Why ``--face-upsample`` (``face_upsample=True``) cannot act in this run, or ``""`` when it can."""
    if has_aligned:
        return "not used with aligned inputs (the face is the whole image: resized, never pasted)"
    if upsampler is None:
        return ("not used: no Real-ESRGAN is loaded to enlarge faces with (--bg-upsampler none, or its weights are "
                "missing and the run is offline: mgfr weights fetch realesrgan-x2, realesrgan-x4 above --upscale 2)")
    return ""
