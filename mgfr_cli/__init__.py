"""mgfr: multi-modal guided diffusion face restoration (MGFR, ICLR 2025), as a library and a CLI."""

__version__ = "0.1.0"
