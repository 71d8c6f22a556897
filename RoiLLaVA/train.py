"""Training entry point (`deepspeed train.py …`, as LLaVA's `train_mem.py`); see roillava/train.py."""

from roillava.train import train

if __name__ == "__main__":
    train()
