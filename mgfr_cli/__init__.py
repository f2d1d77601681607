"""mgfr: multi-modal guided diffusion face restoration (MGFR, ICLR 2025), as a library and a CLI.

``from mgfr_cli import Restorer`` is the Python API (:mod:`mgfr_cli.api`); importing the package loads no
torch: the API module is imported on first use.
"""

__version__ = "0.1.0"
__all__ = ["Restorer", "RestoreResult", "FaceResult"]


def __getattr__(name):
    if name in __all__:
        from mgfr_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'mgfr_cli' has no attribute {name!r}")
