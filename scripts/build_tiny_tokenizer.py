"""Builds the built-in tiny tokenizer into rewardmap_jax/assets/tiny_tokenizer (deterministic).

    python scripts/build_tiny_tokenizer.py [--out DIR]

`tests/data/test_tokenizer.py` rebuilds it in a temp dir and checks the bytes match the committed
copy, so rerun this script and commit the result whenever the corpus or settings change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # runnable from a checkout without `pip install -e .`
    sys.path.insert(0, str(_REPO))

from rewardmap_jax.data.tokenizer_build import build_tiny_tokenizer  # noqa: E402

DEFAULT_OUT = _REPO / "rewardmap_jax" / "assets" / "tiny_tokenizer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args()
    out = build_tiny_tokenizer(args.out)
    print(f"wrote {sorted(p.name for p in out.iterdir())} to {out}")


if __name__ == "__main__":
    main()
