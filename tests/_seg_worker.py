"""Subprocess entry for the segmentation torchrun test (not collected by pytest).

python -m torch.distributed.run ... tests/_seg_worker.py <visattn train options>
    runs `visattn train` (argument parsing included) with the tiny test segmentation model registered.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _tiny_seg_model import ensure_registered

if __name__ == "__main__":
    ensure_registered()
    from visattn.commands import train_cmd

    raise SystemExit(train_cmd.main(sys.argv[1:]))
