"""DVC stage `inputs`: record what data.novel_dir and data.pku_split_dir hold, so preprocess
re-runs when their files change (DVC cannot depend on a parameter path that may be empty)."""

import argparse
import sys
from pathlib import Path

from pipeline.core.config import load_params
from pipeline.core.errors import cli_exit_code
from pipeline.core.io import atomic_write_json, sweep_temps
from pipeline.data.inputs import input_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="record JSON")
    args = parser.parse_args()
    sweep_temps([args.out])
    sys.exit(cli_exit_code(
        lambda: atomic_write_json(args.out, input_record(load_params().data))))


if __name__ == "__main__":
    main()
