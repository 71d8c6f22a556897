"""LISA's entry point: `deepspeed train_ds.py --version=… --dataset_dir=./dataset --vision_pretrained=… …`.

See `segllava/train.py` for the flags (and `README.md` beside this file).
"""

from segllava.train import train

if __name__ == "__main__":
    train()
