"""Typed, validated configuration: one frozen dataclass per `params.yaml` group.

Usage::

    from pipeline.core.config import load_params
    params = load_params("params.yaml")          # every group, validated
    params.tune.epochs                           # typed access

Every stage reads its parameters only through this module. A bad value fails before any work
with one line naming the key, the value and what is allowed, e.g.
``tune.epochs: -1 is invalid: must be an integer >= 1``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.core.errors import ConfigError


def _spec(default: Any, *, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None, help: str = "") -> Any:
    """A dataclass field with numeric bounds checked by `_validate_value`."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class SynthConfig:
    """The procedural dataset written in NTU `.skeleton` format (stage `synthesize`)."""

    seed: int = _spec(0, ge=0)
    base_classes: int = _spec(24, ge=2, help="classes used for pretraining, tuning and linear/kNN")
    novel_classes: int = _spec(6, ge=0, help="classes held out for few-shot evaluation")
    performers: int = _spec(12, ge=2)
    setups: int = _spec(2, ge=1)
    replications: int = _spec(1, ge=1)
    cameras: int = _spec(3, ge=1, le=3)
    min_frames: int = _spec(30, ge=12)
    max_frames: int = _spec(120, ge=12)
    artifact_rate: float = _spec(0.05, ge=0.0, le=1.0,
                                 help="per-file probability of each kind of recording artifact")
    noise_std: float = _spec(0.01, ge=0.0, help="sensor noise (metres)")
    nan_rate: float = _spec(0.0, ge=0.0, le=1.0,
                            help="fraction of files with one NaN joint (a few real NTU files)")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset the pipeline runs on."""

    source: Literal["synthetic", "ntu60", "ntu120", "pku1", "pku2", "npz", "pyskl"] = "synthetic"
    benchmark: Literal["xsub", "xview", "xset"] = "xsub"
    raw_dir: str = _spec("data/raw/synthetic", help="folder of raw files, or the .npz/.pkl file")
    novel_dir: str = _spec("", help="NTU-120 .skeleton folder for few-shot classes A061-A120 "
                                    "when source is ntu60; empty disables")
    pku_split_dir: str = _spec("", help="folder with PKU-MMD phase II split files")
    processed_dir: str = "data/processed"


@dataclass(frozen=True)
class PreprocessConfig:
    """Raw files -> packed store (stage `preprocess`)."""

    workers: int = _spec(2, ge=1)
    on_error: Literal["skip", "raise"] = "skip"


@dataclass(frozen=True)
class ModelConfig:
    """Transformer encoder (+ MAMP decoder) sizes. The paper size is depth 8, dim 256, 8 heads,
    120 frames, decoder depth 3 (NTU-60) or 5 (NTU-120, PKU)."""

    depth: int = _spec(4, ge=2)
    dim: int = _spec(64, ge=8)
    heads: int = _spec(4, ge=1)
    mlp_ratio: float = _spec(4.0, gt=0)
    frames: int = _spec(40, ge=4)
    t_patch: int = _spec(4, ge=1)
    actors: int = _spec(2, ge=1)
    joints: int = _spec(25, ge=1)
    decoder_depth: int = _spec(2, ge=1)
    decoder_dim: int = _spec(64, ge=8)
    decoder_heads: int = _spec(4, ge=1)
    drop_path: float = _spec(0.0, ge=0, lt=1, help="stochastic depth of the last block, rising "
                             "linearly from 0 at the first; 0 (the release's pretraining and "
                             "tuning) builds no drop-path layer at all")


@dataclass(frozen=True)
class PretrainConfig:
    """MAMP masked motion prediction (stage `pretrain`)."""

    epochs: int = _spec(20, ge=1)
    batch_size: int = _spec(64, ge=1, help="global batch size, split across processes")
    lr: float = _spec(1e-3, gt=0)
    min_lr: float = _spec(5e-4, ge=0)
    warmup_epochs: int = _spec(2, ge=0)
    weight_decay: float = _spec(0.05, ge=0)
    clip_grad: float = _spec(0.0, ge=0, help="max grad norm; 0 disables (MAMP does not clip)")
    mask_ratio: float = _spec(0.9, gt=0, lt=1)
    tau: float = _spec(0.80, ge=0, help="motion-aware masking temperature; 0 = uniform masking")
    crop_min: float = _spec(0.5, gt=0, le=1, help="random crop keeps at least this fraction")
    crop_floor: int = _spec(64, ge=1, help="random crop never keeps fewer frames than this")
    rotate: float = _spec(0.3, ge=0, help="max rotation angle (rad) about each axis")
    seed: int = _spec(0, ge=0)
    compile: bool = False
    loader_workers: int = _spec(1, ge=0)


@dataclass(frozen=True)
class TuneConfig:
    """STARS nearest-neighbour contrastive tuning (stage `tune`)."""

    epochs: int = _spec(30, ge=1)
    batch_size: int = _spec(32, ge=2, help="global batch size, split across processes")
    lr: float = _spec(1e-3, gt=0)
    layer_decay: float = _spec(0.45, gt=0, le=1)
    weight_decay: float = _spec(0.05, ge=0)
    clip_grad: float = _spec(3.0, ge=0)
    tuned_blocks: int = _spec(-1, ge=-1, help="blocks tuned from the top; -1 = depth/2")
    full: bool = _spec(False, help="tune every block and the embeddings")
    head_warmup_epochs: int = _spec(0, ge=0, help="head-only epochs first (public release: 20)")
    queue_size: int = _spec(32768, ge=2, help="K >= 2: a sample always has another candidate")
    temperature: float = _spec(0.07, gt=0)
    predictor_dim: int = _spec(4096, ge=1)
    view: Literal["none", "crop_rotate", "mask"] = "none"
    view_mask_ratio: float = _spec(0.5, ge=0, lt=1, help="token drop ratio for view=mask")
    val_fraction: float = _spec(0.1, ge=0, lt=1, help="train fraction held out for the kNN curve")
    val_seed: int = _spec(0, ge=0)
    val_k: int = _spec(1, ge=1)
    keep_best: bool = True
    seed: int = _spec(0, ge=0)
    compile: bool = False
    loader_workers: int = _spec(1, ge=0)


@dataclass(frozen=True)
class EvalConfig:
    """Frozen-encoder evaluation (stage `evaluate`)."""

    knn_k: list[int] = _spec([1, 2, 5, 10], ge=1)
    probe_mode: Literal["cached", "paper"] = "cached"
    probe_epochs: int = _spec(100, ge=1)
    probe_lr: float = _spec(0.1, gt=0)
    probe_batch_size: int = _spec(256, ge=1)
    fewshot_shots: list[int] = _spec([1, 2, 5], ge=1)
    fewshot_ways: list[int] = _spec([5, 0], ge=0, help="N of N-way episodes; 0 = all novel classes")
    fewshot_episodes: int = _spec(600, ge=1)
    fewshot_queries: int = _spec(15, ge=1, help="query samples per class per episode")
    fewshot_knn_k: list[int] = _spec([1, 2, 5], ge=1, help="k of the release's few-shot kNN")
    fewshot: bool = _spec(True, help="few-shot on the novel classes; true needs novel classes "
                                     "(checked before any work), false says it is off")
    seed: int = _spec(0, ge=0)
    batch_size: int = _spec(256, ge=1, help="feature extraction batch size")
    loader_workers: int = _spec(0, ge=0, help="data loader processes for feature extraction")


@dataclass(frozen=True)
class FinetuneConfig:
    """End-to-end fine-tuning of encoder + classification head (stage `finetune`), MAMP's
    `main_finetune.py` recipe, under three protocols: `full` (the labelled train split),
    `semi` (class-stratified `label_fractions` of it, one run per subset seed) and `transfer`
    (the `transfer` group's target dataset). Both the MAMP and the STARS checkpoints."""

    protocols: list[Literal["full", "semi", "transfer"]] = _spec(["full", "semi", "transfer"])
    epochs: int = _spec(4, ge=1, help="release: 100")
    warmup_epochs: int = _spec(1, ge=0, help="release: 5")
    batch_size: int = _spec(16, ge=2, help="global batch (release: 24 per GPU x 2 GPUs)")
    lr: float = _spec(1e-3, gt=0, help="release: 3e-4 at batch 48")
    min_lr: float = _spec(1e-5, ge=0, help="where the cosine ends")
    weight_decay: float = _spec(0.05, ge=0)
    layer_decay: float = _spec(0.8, gt=0, le=1, help="block i gets lr x decay^(depth - i)")
    drop_path: float = _spec(0.3, ge=0, lt=1, help="the encoder's stochastic depth here "
                                                   "(model.drop_path for this stage only)")
    head_dropout: float = _spec(0.3, ge=0, lt=1, help="dropout on the tokens before pooling")
    head_hidden: int = _spec(256, ge=1, help="hidden width of the head's MLP (release: 2048)")
    label_smoothing: float = _spec(0.1, ge=0, lt=1)
    clip_grad: float = _spec(0.0, ge=0, help="max grad norm; 0 disables (the release)")
    label_fractions: list[float] = _spec([0.05, 0.2], gt=0, le=1, help="labelled fractions "
                                         "of the semi protocol (release: 0.01, 0.1)")
    seeds: list[int] = _spec([0, 1], ge=0, help="one semi run per subset seed (release: 5 runs)")
    seed: int = _spec(0, ge=0)
    compile: bool = False
    loader_workers: int = _spec(1, ge=0)


@dataclass(frozen=True)
class TransferConfig:
    """The transfer protocol's target: a second data source with its own classes, raw folder,
    store and splits (fields as in `data`). The default is a synthetic dataset written in
    the PKU-MMD II layout by stage `synthesize_target`, sized by the `synth_*` keys."""

    source: Literal["pku2", "pku1", "ntu60", "ntu120", "npz", "pyskl"] = "pku2"
    benchmark: Literal["xsub", "xview", "xset"] = "xsub"
    raw_dir: str = _spec("data/raw/synthetic_pku", help="the target's raw folder or file")
    pku_split_dir: str = _spec("", help="folder with the PKU-MMD split files (default raw_dir)")
    processed_dir: str = "data/processed_transfer"
    synth_classes: int = _spec(12, ge=2, le=30, help="synthetic target: action classes")
    synth_performers: int = _spec(9, ge=2, help="synthetic target: performers (videos each)")
    synth_videos: int = _spec(1, ge=1, help="synthetic target: videos per performer and view")
    synth_seed: int = _spec(1, ge=0, help="synthetic target: seed (performers, cameras)")

    def as_data(self) -> DataConfig:
        """The target as a `data` group, for the preprocess code."""
        return DataConfig(source=self.source, benchmark=self.benchmark, raw_dir=self.raw_dir,
                          novel_dir="", pku_split_dir=self.pku_split_dir,
                          processed_dir=self.processed_dir)


@dataclass(frozen=True)
class ReportConfig:
    """`make report` (stage `report`)."""

    tsne_per_class: int = _spec(30, ge=1, help="class-balanced t-SNE subsample")
    stick_samples: int = _spec(4, ge=1)
    seed: int = _spec(0, ge=0)


@dataclass(frozen=True)
class DistConfig:
    """How a training stage is launched: one process, or torchrun above 1."""

    nproc: int = _spec(1, ge=1, help="processes per node")
    nnodes: int = _spec(1, ge=1)
    node_rank: int = _spec(0, ge=0)
    rdzv_endpoint: str = "127.0.0.1:29500"
    backend: Literal["auto", "gloo", "nccl"] = "auto"


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow. An empty `uri` means sqlite:///<repo>/mlflow.db; MLFLOW_TRACKING_URI overrides."""

    enabled: bool = True
    uri: str = ""
    experiment: str = "stars"


@dataclass(frozen=True)
class Params:
    """All of `params.yaml`."""

    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# --------------------------------------------------------------------------- validation


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp))


def _bounds_text(meta: dict) -> str:
    parts = [f"{op} {meta[k]}" for k, op in
             (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if meta.get(k) is not None]
    return " and ".join(parts)


def _check_scalar(key: str, value: Any, tp: Any, meta: dict) -> Any:
    allowed = _describe(tp)
    bounds = _bounds_text(meta)
    if bounds and tp in (int, float):
        allowed += " " + bounds

    def bad() -> ConfigError:
        return ConfigError(f"{key}: {value!r} is invalid: must be {allowed}")

    if typing.get_origin(tp) is Literal:
        if value not in typing.get_args(tp):
            raise bad()
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        value = float(value)
        if not math.isfinite(value):
            raise bad()
    elif tp is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if tp in (int, float):
        checks = (("ge", lambda v, b: v >= b), ("gt", lambda v, b: v > b),
                  ("le", lambda v, b: v <= b), ("lt", lambda v, b: v < b))
        for name, ok in checks:
            if meta.get(name) is not None and not ok(value, meta[name]):
                raise bad()
    return value


def _check_value(key: str, value: Any, tp: Any, meta: dict) -> Any:
    if typing.get_origin(tp) is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{key}: {value!r} is invalid: must be a non-empty "
                              f"list of {_describe(item_tp)}s")
        return [_check_scalar(f"{key}[{i}]", v, item_tp, meta) for i, v in enumerate(value)]
    return _check_scalar(key, value, tp, meta)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: {raw!r} is invalid: must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{prefix + '.' if prefix else ''}{key}: unknown key; "
                              f"allowed: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, raw.get(name), key)
        elif name in raw:
            values[name] = _check_value(key, raw[name], tp, dict(f.metadata))
    return cls(**values)


def _cross_check(p: Params) -> None:
    """Constraints between keys, checked once all groups parsed."""
    m = p.model
    if m.dim % m.heads:
        raise ConfigError(f"model.heads: {m.heads} is invalid: must divide model.dim ({m.dim})")
    if m.decoder_dim % m.decoder_heads:
        raise ConfigError(f"model.decoder_heads: {m.decoder_heads} is invalid: "
                          f"must divide model.decoder_dim ({m.decoder_dim})")
    if m.frames % m.t_patch:
        raise ConfigError(f"model.t_patch: {m.t_patch} is invalid: "
                          f"must divide model.frames ({m.frames})")
    if p.tune.tuned_blocks > m.depth:
        raise ConfigError(f"tune.tuned_blocks: {p.tune.tuned_blocks} is invalid: "
                          f"must be <= model.depth ({m.depth}) or -1")
    for group in ("pretrain", "finetune"):
        g = getattr(p, group)
        if g.min_lr > g.lr:
            raise ConfigError(f"{group}.min_lr: {g.min_lr} is invalid: "
                              f"must be <= {group}.lr ({g.lr})")
    if p.synth.min_frames > p.synth.max_frames:
        raise ConfigError(f"synth.min_frames: {p.synth.min_frames} is invalid: "
                          f"must be <= synth.max_frames ({p.synth.max_frames})")
    world = p.dist.nproc * p.dist.nnodes
    for group in ("pretrain", "tune", "finetune"):
        bs = getattr(p, group).batch_size
        if bs % world:
            raise ConfigError(f"{group}.batch_size: {bs} is invalid: must be divisible by "
                              f"dist.nproc x dist.nnodes ({world})")
    if p.dist.node_rank >= p.dist.nnodes:
        raise ConfigError(f"dist.node_rank: {p.dist.node_rank} is invalid: "
                          f"must be < dist.nnodes ({p.dist.nnodes})")
    benchmarks = {"synthetic": ("xsub", "xview"), "ntu60": ("xsub", "xview"),
                  "ntu120": ("xsub", "xset"), "pku1": ("xsub", "xview"),
                  "pku2": ("xsub", "xview")}
    for group in ("data", "transfer"):
        g = getattr(p, group)
        allowed = benchmarks.get(g.source)
        if allowed and g.benchmark not in allowed:
            raise ConfigError(f"{group}.benchmark: {g.benchmark!r} is invalid for "
                              f"{group}.source {g.source!r}: must be one of {', '.join(allowed)}")
    if p.eval.fewshot:
        _check_novel_classes(p)


def _check_novel_classes(p: Params) -> None:
    """Few-shot is never silently off: without novel classes it must be switched off."""
    if p.data.source == "synthetic" and p.synth.novel_classes == 0:
        raise ConfigError("eval.fewshot needs novel classes: set synth.novel_classes >= 1, "
                          "or eval.fewshot: off")
    if p.data.source == "ntu60" and not p.data.novel_dir:
        raise ConfigError("eval.fewshot needs novel classes: set data.novel_dir to the "
                          "NTU-120 .skeleton folder, or eval.fewshot: off")
    if p.data.source not in ("synthetic", "ntu60"):
        raise ConfigError(f"eval.fewshot needs novel classes, and data.source "
                          f"{p.data.source!r} has none: use data.source ntu60 with "
                          f"data.novel_dir, or eval.fewshot: off")


def parse_params(raw: dict) -> Params:
    """Validate a params mapping (as loaded from YAML) into `Params`."""
    params = _build(Params, raw, "")
    _cross_check(params)
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Load and validate `params.yaml`; raises ConfigError with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameters file not found; run from the repository root")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})")
    return parse_params(raw or {})


def to_dict(cfg: Any) -> dict:
    """A config (or group) as a plain dict, for checkpoints and MLflow."""
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, for logging params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out

