"""fixture.py — writes reference tensors in the BRFX format that tests/fixture.c reads.

Format (little-endian): b"BRFX", u32 version=1, u32 count, then per tensor:
u32 name_len, name (utf-8), u32 ndim, u32 shape[ndim], float32 data.
"""
import struct

import numpy as np


def write_fixture(path, tensors):
    """tensors: dict name -> array-like (torch tensors are converted with .detach())."""
    with open(path, "wb") as f:
        f.write(b"BRFX")
        f.write(struct.pack("<II", 1, len(tensors)))
        for name, value in tensors.items():
            if hasattr(value, "detach"):
                value = value.detach().cpu().double().numpy()
            arr = np.ascontiguousarray(np.asarray(value, dtype=np.float32))
            encoded = name.encode()
            f.write(struct.pack("<I", len(encoded)))
            f.write(encoded)
            f.write(struct.pack("<I", arr.ndim))
            f.write(struct.pack("<%dI" % arr.ndim, *arr.shape))
            f.write(arr.astype("<f4").tobytes())
