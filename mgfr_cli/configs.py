"""YAML as plain data: one strict loader, and the model architecture configs in ``models/``.

Every YAML file mgfr reads goes through :func:`read_yaml` (``yaml.safe_load``; a key given twice is
refused) and every mapping through :func:`check_keys`, so a typo in a key is an error naming the file and
the key, never a silently ignored setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgfr_cli.errors import ConfigError

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def read_yaml(path: Path) -> dict:
    """A YAML mapping from ``path`` (an empty file is an empty mapping)."""
    import yaml

    _Loader = _loader()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        from mgfr_cli.files import why_missing

        why = why_missing(path) if not Path(path).exists() else f"cannot read ({exc.strerror or exc})"
        raise ConfigError(f"{path}: {why}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply to be a config") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line, whatever YAML says
        raise ConfigError(f"{path}: malformed YAML{line} ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top, got {type(data).__name__}")
    return data


def _loader():
    """``yaml.SafeLoader`` that also reads ``1e-4`` as a number (YAML 1.1 wants ``1.0e-4``; people write both)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            """A key given twice in one mapping is an error (YAML would keep the last, silently dropping the
            first: two ``prompt:`` lines in a sidecar restored with one of them). Merges (``<<:``) may override."""
            if isinstance(node, yaml.MappingNode):
                seen = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.get(key)
                    except TypeError:  # an unhashable key: the base constructor says so
                        continue
                    seen[key] = key_node.start_mark.line
                    if first is not None:
                        line = key_node.start_mark.line
                        where = f"lines {first + 1} and {line + 1}" if first != line else f"line {line + 1}"
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} given twice ({where}): keep one", key_node.start_mark)
            return super().construct_mapping(node, deep)

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                                 list("-+0123456789."))
    return Loader


def check_keys(data: dict, allowed, where: str) -> None:
    """Raise naming ``where`` and the first unknown key."""
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(map(str, allowed)))})")


def expect_type(value: Any, types, where: str, key: str):
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ConfigError(f"{where}: key {key!r} must be {_type_names(types)}, got a boolean")
    if not isinstance(value, types):
        raise ConfigError(f"{where}: key {key!r} must be {_type_names(types)}, got {type(value).__name__}")
    return value


def _type_names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {str: "text", int: "a whole number", float: "a number", list: "a list", dict: "a mapping", bool: "true/false"}
    return " or ".join(names.get(t, t.__name__) for t in types)


@dataclass(frozen=True)
class ModelConfig:
    """An MGFR architecture: the base model's shape and the adapter's own knobs (``models/*.yaml``)."""

    name: str
    resolution: int
    base: dict  # unet / vae / text_encoder / scheduler keyword arguments (diffusers and transformers names)
    adapter: dict  # MgfrAdapter keyword arguments beyond the UNet's encoder shape
    base_weights: str | None = None  # manifest entry that holds the base model's weights
    path: Path | None = field(default=None, compare=False)


_MODEL_KEYS = {"name", "resolution", "base", "adapter", "base_weights"}
_BASE_KEYS = {"unet", "vae", "text_encoder", "scheduler"}
_ADAPTER_KEYS = {"use_reference", "id_embed_dim", "id_tokens", "rlf_channels"}


def load_model_config(name_or_path: str | Path) -> ModelConfig:
    """A config by name (``mgfr-sd21``, from ``models/``) or by path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = MODELS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in MODELS_DIR.glob("*.yaml")))
        raise ConfigError(f"{path}: no such model config (known: {known})")
    data = read_yaml(path)
    check_keys(data, _MODEL_KEYS, str(path))
    for key in ("name", "resolution", "base", "adapter"):
        if key not in data:
            raise ConfigError(f"{path}: missing key {key!r}")
    expect_type(data["base"], dict, str(path), "base")
    expect_type(data["adapter"], dict, str(path), "adapter")
    check_keys(data["base"], _BASE_KEYS, f"{path}: base")
    check_keys(data["adapter"], _ADAPTER_KEYS, f"{path}: adapter")
    resolution = expect_type(data["resolution"], int, str(path), "resolution")
    if resolution % 8:
        raise ConfigError(f"{path}: resolution {resolution} is not a multiple of 8")
    return ModelConfig(name=str(data["name"]), resolution=resolution, base=data["base"],
                       adapter={**data["adapter"], "resolution": resolution},
                       base_weights=data.get("base_weights"), path=path)
