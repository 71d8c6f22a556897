"""Training entry point (`deepspeed train.py …`, run by pretrain.sh / finetune_lora.sh); see swillava/train.py."""

from swillava.train import train

if __name__ == "__main__":
    train()
