"""Typed, validated configuration: one frozen pydantic dataclass per `params.yaml` group.

Usage::

    from pipeline.core.config import load_params
    params = load_params("params.yaml")          # every group, validated
    params.tune.epochs                           # typed access

Every stage reads its parameters only through this module. A bad value fails before any work
with one line naming the key, the value and what is allowed, e.g.
``tune.epochs: -1 is invalid: must be an integer >= 1``. Groups are pydantic dataclasses, so
`dataclasses.asdict` / `replace` / `fields` work on them and `replace` re-validates.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass

from pipeline.core.errors import ConfigError

# Strict: no silent coercion ("3" is not 3, 2.5 is not an integer); unknown keys are errors.
_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

Counts = list[Annotated[int, Field(ge=1)]]     # e.g. the k of kNN, shots per class
Precision = Literal["fp32", "bf16"]            # bf16: autocast; sensitive parts stay fp32


def _counts(*default: int, description: str | None = None) -> Any:
    """A non-empty list field with these default items (bounds come from the item type)."""
    return Field(default_factory=lambda: list(default), min_length=1, description=description)


# --------------------------------------------------------------------------- groups


@dataclass(frozen=True, config=_STRICT)
class SynthConfig:
    """The procedural dataset written in NTU `.skeleton` format (stage `synthesize`)."""

    seed: int = Field(0, ge=0)
    base_classes: int = Field(24, ge=2,
                              description="classes used for pretraining, tuning and linear/kNN")
    novel_classes: int = Field(6, ge=0, description="classes held out for few-shot evaluation")
    performers: int = Field(12, ge=2)
    setups: int = Field(2, ge=1)
    replications: int = Field(1, ge=1)
    cameras: int = Field(3, ge=1, le=3)
    min_frames: int = Field(30, ge=12)
    max_frames: int = Field(120, ge=12)
    artifact_rate: float = Field(
        0.05, ge=0.0, le=1.0, description="per-file probability of each kind of recording artifact")
    noise_std: float = Field(0.01, ge=0.0, description="sensor noise (metres)")
    nan_rate: float = Field(
        0.0, ge=0.0, le=1.0,
        description="fraction of files with one NaN joint (a few real NTU files)")
    damaged_files: int = Field(
        3, ge=0, le=99,
        description="malformed files written beside the valid ones (truncated mid-frame, a "
                    "non-numeric token, a wrong joint count, in turn) so that every run "
                    "exercises preprocess's skip path")


@dataclass(frozen=True, config=_STRICT)
class DataConfig:
    """Which dataset the pipeline runs on."""

    source: Literal["synthetic", "ntu60", "ntu120", "pku1", "pku2", "npz", "pyskl"] = "synthetic"
    benchmark: Literal["xsub", "xview", "xset"] = "xsub"
    raw_dir: str = Field("data/raw/synthetic",
                         description="folder of raw files, or the .npz/.pkl file")
    novel_dir: str = Field("", description="NTU-120 .skeleton folder for few-shot classes "
                                           "A061-A120 when source is ntu60; empty disables")
    pku_split_dir: str = Field("", description="folder with PKU-MMD phase II split files")
    processed_dir: str = "data/processed"


@dataclass(frozen=True, config=_STRICT)
class PreprocessConfig:
    """Raw files -> packed store (stage `preprocess`)."""

    workers: int = Field(2, ge=1)
    on_error: Literal["skip", "raise"] = "skip"
    pku_frames: Literal["mamp", "ntu"] = Field(
        "mamp", description="PKU-MMD samples: mamp = MAMP's pku_gendata.py + feeder (first 300 "
                            "frames, all-zero frames kept, not centred); ntu = drop empty "
                            "frames, centre as NTU")


@dataclass(frozen=True, config=_STRICT)
class ModelConfig:
    """Transformer encoder (+ MAMP decoder) sizes. The paper size is depth 8, dim 256, 8 heads,
    120 frames, decoder depth 3 (NTU-60) or 5 (NTU-120, PKU)."""

    depth: int = Field(4, ge=2)
    dim: int = Field(64, ge=8)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    frames: int = Field(40, ge=4)
    t_patch: int = Field(4, ge=1)
    actors: int = Field(2, ge=1)
    joints: int = Field(25, ge=1)
    decoder_depth: int = Field(2, ge=1)
    decoder_dim: int = Field(64, ge=8)
    decoder_heads: int = Field(4, ge=1)
    drop_path: float = Field(0.0, ge=0, lt=1, description=(
        "stochastic depth of the last block, rising linearly from 0 at the first; 0 (the "
        "release's pretraining and tuning) builds no drop-path layer at all"))


@dataclass(frozen=True, config=_STRICT)
class PretrainConfig:
    """MAMP masked motion prediction (stage `pretrain`)."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1, description="global batch size, split across processes")
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(5e-4, ge=0)
    warmup_epochs: int = Field(2, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    clip_grad: float = Field(0.0, ge=0,
                             description="max grad norm; 0 disables (MAMP does not clip)")
    decay_exempt: Literal["none", "bias_norm", "bias_norm_embed"] = Field(
        "bias_norm", description="tensors without weight decay: bias_norm = biases and 1-D "
                                 "tensors (release); bias_norm_embed also embeddings, mask token")
    mask_ratio: float = Field(0.9, gt=0, lt=1)
    tau: float = Field(0.80, ge=0,
                       description="motion-aware masking temperature; 0 = uniform masking")
    crop_min: float = Field(0.5, gt=0, le=1, description="random crop keeps at least this fraction")
    crop_floor: int = Field(64, ge=1, description="random crop never keeps fewer frames than this")
    rotate: float = Field(0.3, ge=0, description="max rotation angle (rad) about each axis")
    seed: int = Field(0, ge=0)
    compile: bool = False
    loader_workers: int = Field(1, ge=0)
    precision: Precision = Field(
        "fp32", description="bf16 autocast (CPU or GPU) for the training step; similarities, "
                            "losses, BatchNorm statistics and optimizer state stay fp32")


@dataclass(frozen=True, config=_STRICT)
class TuneConfig:
    """STARS nearest-neighbour contrastive tuning (stage `tune`)."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=2, description="global batch size, split across processes")
    lr: float = Field(1e-3, gt=0)
    layer_decay: float = Field(0.45, gt=0, le=1)
    weight_decay: float = Field(0.01, ge=0, description="AdamW decay (release: torch's default "
                                                        "0.01; its config's 0.05 is never passed)")
    decay_exempt: Literal["none", "bias_norm", "bias_norm_embed"] = Field(
        "none", description="tensors without weight decay: none (release: every tuned tensor), "
                            "bias_norm = biases and 1-D tensors, bias_norm_embed also embeddings")
    clip_grad: float = Field(3.0, ge=0)
    clip_mode: Literal["per_tensor", "global"] = Field(
        "per_tensor", description="per_tensor: each tensor's grad norm to clip_grad (release); "
                                  "global: the norm of all grads together")
    empty_slots: Literal["eligible", "last"] = Field(
        "eligible", description="never-filled queue slots (random unit vectors): eligible as "
                                "neighbours (release) or ranked below every filled slot")
    tuned_blocks: int = Field(-1, ge=-1, description="blocks tuned from the top; -1 = depth/2")
    full: bool = Field(False, description="tune every block and the embeddings")
    head_warmup_epochs: int = Field(0, ge=0,
                                    description="head-only epochs first (the release's second "
                                                "stage: 20), then a fresh optimizer tunes")
    queue_size: int = Field(32768, ge=2,
                            description="K >= 2: a sample always has another candidate")
    temperature: float = Field(0.07, gt=0)
    predictor_dim: int = Field(4096, ge=1)
    view: Literal["none", "crop_rotate", "mask"] = "none"
    view_mask_ratio: float = Field(0.5, ge=0, lt=1, description="token drop ratio for view=mask")
    val_fraction: float = Field(0.1, ge=0, lt=1,
                                description="train fraction held out for the kNN curve")
    val_seed: int = Field(0, ge=0)
    val_k: int = Field(1, ge=1)
    keep_best: bool = True
    seed: int = Field(0, ge=0)
    compile: bool = False
    loader_workers: int = Field(1, ge=0)
    precision: Precision = Field(
        "fp32", description="bf16 autocast for the tuning step and its validation features "
                            "(as pretrain.precision)")


@dataclass(frozen=True, config=_STRICT)
class EvalConfig:
    """Frozen-encoder evaluation (stage `evaluate`)."""

    knn_k: Counts = _counts(1, 2, 5, 10)
    select: Literal["last", "val", "test"] = Field(
        "last", description="epoch reported for the probe and tuning: last; best on a validation "
                            "split; best on test (the release's reporting; metrics *_testsel)")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="train fraction held out to pick "
                                                             "the probe's epoch under select: val")
    probe_mode: Literal["cached", "paper"] = "cached"
    probe_epochs: int = Field(100, ge=1)
    probe_lr: float = Field(0.1, gt=0)
    probe_batch_size: int = Field(256, ge=1)
    fewshot_shots: Counts = _counts(1, 2, 5)
    fewshot_ways: list[Annotated[int, Field(ge=0)]] = _counts(
        5, 0, description="N of N-way episodes; 0 = all novel classes")
    fewshot_episodes: int = Field(600, ge=1)
    fewshot_queries: int = Field(15, ge=1, description="query samples per class per episode")
    fewshot_knn_k: Counts = _counts(1, 2, 5, description="k of the release's few-shot kNN")
    fewshot: bool = Field(True, description="few-shot on the novel classes; true needs novel "
                                            "classes (checked before any work), false says it "
                                            "is off")
    seed: int = Field(0, ge=0)
    batch_size: int = Field(256, ge=1, description="feature extraction batch size")
    loader_workers: int = Field(0, ge=0, description="data loader processes for feature extraction")
    precision: Precision = Field(
        "fp32", description="bf16 autocast for feature extraction and the paper-mode probe "
                            "(its train and test features alike; as pretrain.precision)")


@dataclass(frozen=True, config=_STRICT)
class FinetuneConfig:
    """End-to-end fine-tuning of encoder + classification head (stage `finetune`), MAMP's
    `main_finetune.py` recipe, under three protocols: `full` (the labelled train split),
    `semi` (class-stratified `label_fractions` of it, one run per subset seed) and `transfer`
    (the `transfer` group's target dataset). Both the MAMP and the STARS checkpoints."""

    protocols: list[Literal["full", "semi", "transfer"]] = Field(
        default_factory=lambda: ["full", "semi", "transfer"], min_length=1)
    epochs: int = Field(4, ge=1, description="release: 100")
    warmup_epochs: int = Field(1, ge=0, description="release: 5")
    batch_size: int = Field(16, ge=2, description="global batch (release: 24 per GPU x 2 GPUs)")
    lr: float = Field(1e-3, gt=0, description="release: 3e-4 at batch 48")
    min_lr: float = Field(1e-5, ge=0, description="where the cosine ends")
    weight_decay: float = Field(0.05, ge=0)
    layer_decay: float = Field(0.8, gt=0, le=1, description="block i gets lr x decay^(depth - i)")
    drop_path: float = Field(0.3, ge=0, lt=1, description="the encoder's stochastic depth here "
                                                          "(model.drop_path for this stage only)")
    head_dropout: float = Field(0.3, ge=0, lt=1, description="dropout on the tokens before pooling")
    head_hidden: int = Field(256, ge=1,
                             description="hidden width of the head's MLP (release: 2048)")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    clip_grad: float = Field(0.0, ge=0, description="max grad norm; 0 disables (the release)")
    label_fractions: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: [0.05, 0.2], min_length=1,
        description="labelled fractions of the semi protocol (release: 0.01, 0.1)")
    seeds: list[Annotated[int, Field(ge=0)]] = _counts(
        0, 1, description="one semi run per subset seed (release: 5 runs)")
    seed: int = Field(0, ge=0)
    compile: bool = False
    loader_workers: int = Field(1, ge=0)
    precision: Precision = Field(
        "fp32", description="bf16 autocast for the training step and the test scoring "
                            "(as pretrain.precision)")


@dataclass(frozen=True, config=_STRICT)
class TransferConfig:
    """The transfer protocol's target: a second data source with its own classes, raw folder,
    store and splits (fields as in `data`). The default is a synthetic dataset written in
    the PKU-MMD II layout by stage `synthesize_target`, sized by the `synth_*` keys."""

    source: Literal["pku2", "pku1", "ntu60", "ntu120", "npz", "pyskl"] = "pku2"
    benchmark: Literal["xsub", "xview", "xset"] = "xsub"
    raw_dir: str = Field("data/raw/synthetic_pku", description="the target's raw folder or file")
    pku_split_dir: str = Field("", description="folder with the PKU-MMD split files "
                                               "(default raw_dir)")
    processed_dir: str = "data/processed_transfer"
    synth_classes: int = Field(12, ge=2, le=30, description="synthetic target: action classes")
    synth_performers: int = Field(9, ge=2,
                                  description="synthetic target: performers (videos each)")
    synth_videos: int = Field(1, ge=1,
                              description="synthetic target: videos per performer and view")
    synth_seed: int = Field(1, ge=0, description="synthetic target: seed (performers, cameras)")

    def as_data(self) -> DataConfig:
        """The target as a `data` group, for the preprocess code."""
        return DataConfig(source=self.source, benchmark=self.benchmark, raw_dir=self.raw_dir,
                          novel_dir="", pku_split_dir=self.pku_split_dir,
                          processed_dir=self.processed_dir)


@dataclass(frozen=True, config=_STRICT)
class ReportConfig:
    """`make report` (stage `report`)."""

    tsne_per_class: int = Field(30, ge=1, description="class-balanced t-SNE subsample")
    stick_samples: int = Field(4, ge=1)
    seed: int = Field(0, ge=0)


@dataclass(frozen=True, config=_STRICT)
class DistConfig:
    """How a training stage is launched: one process, or torchrun above 1."""

    nproc: int = Field(1, ge=1, description="processes per node")
    nnodes: int = Field(1, ge=1, description="nodes: node 0 runs DVC, others `pipeline worker`")
    rdzv_endpoint: str = "127.0.0.1:29500"
    backend: Literal["auto", "gloo", "nccl"] = "auto"


@dataclass(frozen=True, config=_STRICT)
class TrackingConfig:
    """MLflow. An empty `uri` means sqlite:///<repo>/mlflow.db; MLFLOW_TRACKING_URI overrides."""

    enabled: bool = True
    uri: str = ""
    experiment: str = "stars"


@dataclass(frozen=True, config=_STRICT)
class Params:
    """All of `params.yaml`."""

    data: DataConfig = Field(default_factory=DataConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    dist: DistConfig = Field(default_factory=DistConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


# --------------------------------------------------------------------------- validation

_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def _describe(tp: Any) -> str:
    """'an integer >= 1', "one of 'a', 'b'", ... for a (possibly Annotated) field type."""
    bounds = ""
    if typing.get_origin(tp) is Annotated:
        tp, *meta = typing.get_args(tp)
        bounds = _bounds_text(meta)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:   # "a list of integers >= 1"
        item = _describe(typing.get_args(tp)[0]).split(" ", 1)[1].replace(" ", "s ", 1)
        return f"a list of {item}"
    text = {int: "an integer", float: "a number", bool: "true or false",
            str: "a string"}.get(tp, str(tp))
    return f"{text} {bounds}".strip()


def _bounds_text(meta: list) -> str:
    """'>= 1 and < 2' from pydantic/annotated-types constraint objects."""
    found = [m for item in meta for m in getattr(item, "metadata", [item])]
    return " and ".join(f"{op} {getattr(m, k)}" for m in found for k, op in _BOUNDS
                        if getattr(m, k, None) is not None)


def _field_rule(cls: type, loc: tuple) -> str:
    """What the field at `loc` (name, or name and list index) must be."""
    field = cls.__pydantic_fields__[loc[0]]
    tp = field.annotation
    if typing.get_origin(tp) is list:
        if len(loc) > 1:
            return _describe(typing.get_args(tp)[0])
        return "a non-empty " + _describe(tp).removeprefix("a ")
    bounds = _bounds_text(field.metadata)
    return f"{_describe(tp)} {bounds}".strip()


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """`cls(**raw)`, with pydantic's first error rewritten as one line naming the key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: {raw!r} is invalid: must be a mapping of keys to values")
    try:
        return cls(**raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err["loc"]
        key = f"{prefix}.{loc[0]}" if prefix else str(loc[0])
        if err["type"] == "unexpected_keyword_argument":
            allowed = ", ".join(f.name for f in dataclasses.fields(cls))
            raise ConfigError(f"{key}: unknown key; allowed: {allowed}") from None
        key += "".join(f"[{i}]" for i in loc[1:])
        raise ConfigError(f"{key}: {err['input']!r} is invalid: must be "
                          f"{_field_rule(cls, loc)}") from None


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
    if not isinstance(raw, dict):
        raise ConfigError(f"params: {raw!r} is invalid: must be a mapping of groups")
    groups = {f.name: f.type for f in dataclasses.fields(Params)}
    for key in raw:
        if key not in groups:
            raise ConfigError(f"{key}: unknown key; allowed: {', '.join(groups)}")
    hints = typing.get_type_hints(Params)
    params = Params(**{name: _build(hints[name], raw.get(name), name) for name in groups})
    _cross_check(params)
    return params


class ParamsLoader(yaml.SafeLoader):
    """YAML as DVC reads it: PyYAML's YAML 1.1 float rule needs a dot, so `1e-3` would be text."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_params(path: str | Path = "params.yaml") -> Params:
    """Load and validate `params.yaml`; raises ConfigError with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameters file not found; run from the repository root")
    try:
        raw = yaml.load(path.read_text(), Loader=ParamsLoader)
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

