"""LISA's entry point: `deepspeed train_ds.py --version=… --dataset_dir=./dataset --vision_pretrained=… …`.

See `segllava/train.py` for the flags. The repository root goes on the path for the shared `eval/metrics.py`.
"""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))

from segllava.train import train  # noqa: E402

if __name__ == "__main__":
    train()
