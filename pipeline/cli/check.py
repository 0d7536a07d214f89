"""`python -m pipeline check [--preset NAME]`: what a run needs, checked before DVC touches a
file (DVC removes a stage's outputs before the stage itself can validate anything).

Usage (`make repro`, `make exp` and `make report` call it first)::

    print(check(Path("params.yaml"), preset="ntu60-xsub"))   # or raises a one-line UserError
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.config import DataConfig, Params, load_params
from pipeline.core.errors import ConfigError, DataError

# dvc.yaml's synthesize stage writes here, so with data.source synthetic it may not exist yet.
SYNTHETIC_OUT = "data/raw/synthetic"
# Where README.md's "Real datasets" table says each source's files go.
WHERE = {
    "ntu60": "put the .skeleton files of nturgbd_skeletons_s001_to_s017 there",
    "ntu120": "put all .skeleton files of NTU RGB+D 120 (S001-S032) there",
    "pku1": "put the PKU-MMD skeleton and label folders there",
    "pku2": "put the PKU-MMD skeleton and label folders there",
    "npz": "point it at a CTR-GCN / MAMP .npz file, e.g. data/raw/NTU60_CS.npz",
    "pyskl": "point it at a pyskl / mmaction2 .pkl file, e.g. data/raw/ntu60_3danno.pkl",
    "synthetic": f"leave it at {SYNTHETIC_OUT} (written by the synthesize stage)",
}
TABLE = 'README.md, "Real datasets"'


def _has_skeletons(folder: Path) -> bool:
    return folder.is_dir() and next(folder.glob("*.skeleton"), None) is not None


def _not_a(kind: str, path: Path) -> str:
    return f"is not a {kind}" if path.exists() else "not found"


def check_data(data: DataConfig) -> str:
    """Raise ConfigError naming the key when `data.source`'s raw files are not where `data`
    says; returns where they were found."""
    raw, source = Path(data.raw_dir), data.source

    def missing(key: str, path: str, what: str) -> ConfigError:
        return ConfigError(f"{key}: {path} {what}; {WHERE[source]} ({TABLE})")

    if source == "synthetic" and Path(data.raw_dir) == Path(SYNTHETIC_OUT):
        return f"{SYNTHETIC_OUT} (written by the synthesize stage)"
    if source in ("synthetic", "ntu60", "ntu120"):
        if not raw.is_dir():
            raise missing("data.raw_dir", data.raw_dir, _not_a("folder", raw))
        if not _has_skeletons(raw):
            raise missing("data.raw_dir", data.raw_dir, "holds no .skeleton files")
        if source == "synthetic" and not (raw / "dataset.json").is_file():
            raise missing("data.raw_dir", data.raw_dir, "holds no dataset.json")
    elif source in ("pku1", "pku2"):
        from pipeline.data.pku import find_layout, split_path

        if not raw.is_dir():
            raise missing("data.raw_dir", data.raw_dir, _not_a("folder", raw))
        try:
            find_layout(raw)
        except DataError as exc:
            raise ConfigError(f"data.raw_dir: {exc} ({TABLE})") from None
        if source == "pku2":
            split = split_path(source, data.benchmark, data.pku_split_dir)
            if not split.is_file():
                raise ConfigError(f"data.pku_split_dir: {split} not found; put the PKU-MMD "
                                  f"phase II split files in data.pku_split_dir ({TABLE})")
    elif not raw.is_file():
        raise missing("data.raw_dir", data.raw_dir, _not_a("file", raw))
    if source == "ntu60" and data.novel_dir and not _has_skeletons(Path(data.novel_dir)):
        raise ConfigError(f"data.novel_dir: {data.novel_dir} holds no .skeleton files; put the "
                          f"NTU-120 files there or set it to \"\" ({TABLE})")
    return data.raw_dir


def check(params_path: Path, preset: str | None = None) -> str:
    """Validate params.yaml (merged with `preset`) and the raw data; one line saying what."""
    if preset:
        from pipeline.cli.presets import preset_params

        params: Params = preset_params(preset, params_path)
    else:
        params = load_params(params_path)
    where = check_data(params.data)
    what = f"{params_path} with preset {preset}" if preset else str(params_path)
    return f"ok: {what} is valid; data.source {params.data.source}, raw data: {where}"
