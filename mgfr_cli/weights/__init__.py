"""Weight files: the manifest and verified fetch, the DiffBIR converter, what restore needs, doctor."""
