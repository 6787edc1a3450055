#!/usr/bin/env python3
"""Copy a safetensors checkpoint directory with every F32 tensor cast to F16 (demo input).

  to_f16.py SRC_DIR DST_DIR
"""
import os
import shutil
import sys

import numpy as np
from safetensors.numpy import load_file, save_file
from safetensors import safe_open


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if name.endswith(".safetensors"):
            with safe_open(path, framework="np") as f:
                metadata = f.metadata()
            tensors = {k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in load_file(path).items()}
            save_file(tensors, os.path.join(dst, name), metadata=metadata)
        elif os.path.isfile(path):
            shutil.copy(path, os.path.join(dst, name))


if __name__ == "__main__":
    main()
