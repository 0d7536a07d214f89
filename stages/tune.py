"""DVC stage `tune`: STARS nearest-neighbour contrastive tuning of the MAMP encoder."""

import argparse
from pathlib import Path

from pipeline.core.stage import stage_context
from pipeline.tune import run_tune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="packed store")
    parser.add_argument("--pretrained", type=Path, required=True, help="MAMP checkpoint")
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--plots", type=Path, required=True, help="plots folder")
    args = parser.parse_args()
    with stage_context("tune", distributed=True,
                       outputs=(args.ckpt, args.metrics, args.plots)) as (params, tracker):
        run_tune(params, args.data, args.pretrained, args.ckpt, args.metrics, args.plots, tracker)


if __name__ == "__main__":
    main()
