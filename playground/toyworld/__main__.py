"""`python -m playground.toyworld --out playground --dataset dataset`: write the toy world."""

import argparse
import json
import time
from pathlib import Path

from .world import WorldSize, generate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--playground", type=Path, default=Path("playground"))
    p.add_argument("--dataset", type=Path, default=Path("dataset"))
    p.add_argument("--seed", type=int, default=0)
    for field, default in WorldSize().__dict__.items():
        p.add_argument(f"--{field.replace('_', '-')}", type=int, default=default, dest=field)
    args = p.parse_args()
    size = WorldSize(**{f: getattr(args, f) for f in WorldSize().__dict__})
    start = time.perf_counter()
    summary = generate(args.playground, args.dataset, seed=args.seed, size=size)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
