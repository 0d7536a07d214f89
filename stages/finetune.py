"""DVC stage `finetune`: encoder + head trained end to end from the MAMP and STARS checkpoints
(full, semi-supervised and transfer protocols)."""

import argparse
from pathlib import Path

from pipeline.core.stage import stage_context
from pipeline.finetune import run_finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="packed store")
    parser.add_argument("--target", type=Path, required=True, help="transfer target store")
    parser.add_argument("--mamp", type=Path, required=True, help="MAMP checkpoint")
    parser.add_argument("--stars", type=Path, required=True, help="STARS checkpoint")
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON")
    args = parser.parse_args()
    with stage_context("finetune", distributed=True,
                       outputs=(args.ckpt, args.metrics)) as (params, tracker):
        run_finetune(params, args.data, args.target, {"mamp": args.mamp, "stars": args.stars},
                     args.ckpt, args.metrics, tracker)


if __name__ == "__main__":
    main()
