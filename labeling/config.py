"""``LabelConfig``: every setting of ``finsent label`` (a pydantic model; cheap to import: no Ray, no torch).

Settings fall in four groups: inputs (where the news is and which fields hold what), the model and its
precision, the actor pool (how many Predictors, with which resources), and the output (format, shard size,
resume). Only the settings that change what is written are recorded in the output directory's manifest
(:func:`LabelConfig.output_settings`); the others (pool size, batch sizes, threads) may differ between a run
and its resumption.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from classifier.config import Config
from classifier.errors import ConfigError

#: output columns the labeller writes itself; passthrough fields may not reuse these names
RESERVED_COLUMNS: tuple[str, ...] = ("id", "label", "score", "model_version")
#: prefix of the per-label probability columns (``p_利多``)
PROB_PREFIX = "p_"


class LabelConfig(Config):
    """Settings of ``finsent label``: batch labelling of news archives on Ray Data."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    example_overrides: ClassVar[tuple[str, ...]] = (
        "inputs=news.jsonl", "model_dir=models/finsent", "output_dir=labels")

    # ---- inputs -------------------------------------------------------------------------------------------
    inputs: list[str] = Field(
        default_factory=list,
        description="input files: paths, globs (news/2024-*.jsonl), directories (read recursively) or fsspec "
        "URLs (s3://bucket/news/, gs://...); one value or a list [a.jsonl,b.csv]. Required.",
    )
    format: Literal["auto", "jsonl", "csv", "parquet", "txt"] = Field(
        "auto",
        description="input format: auto = from the extension (.jsonl/.json/.ndjson, .csv, .parquet/.pq, "
        ".txt; a .gz/.bz2/.xz/.zst suffix is decompressed); txt = one document per line, the whole line is "
        "the text.",
    )
    text_fields: list[str] = Field(
        default_factory=lambda: ["text"],
        description="field(s) holding the text (JSONL/CSV/Parquet); several are joined by a newline, missing "
        "ones skipped, as the stream does for news (text_fields=[title,content]).",
    )
    id_field: str | None = Field(
        "id",
        description="field holding the document id (written as a string); rows without one get "
        "<file>:<row> (file relative to the inputs' common folder, row counted from 0). null = always "
        "<file>:<row>.",
    )
    passthrough: list[str] = Field(
        default_factory=list,
        description="input fields copied to the output next to the labels (e.g. [published_at,ticker]); "
        "stored as text (strings unchanged, other values as JSON) so every shard has the same schema; "
        "missing values are null.",
    )

    # ---- model --------------------------------------------------------------------------------------------
    model_dir: str | None = Field(
        None, description="finsent model directory (written by `finsent finetune`). Required."
    )
    quantize: Literal["none", "int8", "auto"] = Field(
        "none",
        description="precision of CPU actors, as Predictor.from_dir's quantize: int8 = dynamic int8 (faster "
        "on some CPUs, probabilities move slightly; model_version ends in +int8 / +onnx-int8), auto = int8 "
        "where it is faster on the host and within tolerance. none keeps fp32.",
    )
    backend: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description="inference backend of CPU actors, as Predictor.from_dir's backend: torch (eager), onnx "
        "(ONNX Runtime; model_version ends in +onnx), auto = the faster of the two on the host, measured once "
        "on the driver and cached. GPU actors always run torch with bf16.",
    )

    # ---- actor pool ---------------------------------------------------------------------------------------
    concurrency: int | None = Field(
        None,
        ge=1,
        description="number of Predictor actors; null = as many as the cluster's CPUs (or GPUs with "
        "num_gpus > 0) fit.",
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per actor.")
    num_gpus: float = Field(
        0.0, ge=0, description="GPUs per actor; > 0 runs the model on cuda (bf16 autocast). 0 = CPU actors."
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads per actor; null = num_cpus (rounded, at least 1)."
    )
    batch_size: int = Field(
        256,
        ge=1,
        description="rows handed to an actor per call; the Predictor sorts them by length, so larger "
        "batches waste less padding.",
    )
    model_batch_size: int = Field(32, ge=1, description="texts per forward pass inside an actor.")

    # ---- output -------------------------------------------------------------------------------------------
    output_dir: str | None = Field(
        None,
        description="output directory (local path or fsspec URL): part-*.parquet|jsonl shards, "
        "_errors.jsonl, _summary.json, _manifest.json. Required.",
    )
    output_format: Literal["parquet", "jsonl"] = Field("parquet", description="format of the output shards.")
    rows_per_shard: int = Field(
        2000,
        ge=1,
        description="input rows per output shard, the unit of resumption: a killed run, started again, "
        "relabels only shards that were not finished. Each input file starts a new shard.",
    )
    overwrite: bool = Field(
        False,
        description="true = discard what output_dir holds from an earlier run with other settings or inputs "
        "and label everything again (without it such a run is refused, saying what differs).",
    )
    progress: bool = Field(True, description="show a progress bar (rows) on the terminal.")
    log_file: str | None = Field(
        None,
        description="where Ray's own log output goes instead of the terminal; null = _label.log in a local "
        "output_dir, else finsent-label.log in the working directory.",
    )

    # ------------------------------------------------------------------------------------------ validators
    @field_validator("inputs", mode="before")
    @classmethod
    def _one_or_list(cls, v: Any) -> Any:
        if isinstance(v, (str, Path)):  # one path (never split: paths and URLs may hold commas)
            return [str(v)]
        return v

    @field_validator("text_fields", "passthrough", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        if isinstance(v, str):  # text_fields=title,content
            return [x.strip() for x in v.split(",") if x.strip()]
        return v

    @field_validator("inputs")
    @classmethod
    def _inputs_not_blank(cls, v: list[str]) -> list[str]:
        if any(not str(x).strip() for x in v):
            raise ValueError("inputs: an entry is blank; list input paths or URLs, e.g. inputs=[news.jsonl]")
        return [str(x).strip() for x in v]

    @field_validator("text_fields")
    @classmethod
    def _text_fields(cls, v: list[str]) -> list[str]:
        if not v or any(not f.strip() for f in v):
            raise ValueError("text_fields: name at least one field holding the text, e.g. text_fields=[text]")
        if len(set(v)) != len(v):
            raise ValueError(f"text_fields: {v} names a field twice")
        return v

    @field_validator("id_field", mode="before")
    @classmethod
    def _id_field(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in ("", "none", "null"):
            return None
        return v

    @field_validator("passthrough")
    @classmethod
    def _passthrough(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name.strip():
                raise ValueError("passthrough: a field name is blank")
            if name in RESERVED_COLUMNS or name.startswith(PROB_PREFIX) or name.startswith("__"):
                raise ValueError(
                    f"passthrough: {name!r} clashes with an output column (id, label, score, model_version, "
                    f"{PROB_PREFIX}<label>); rename it in the input or leave it out"
                )
        if len(set(v)) != len(v):
            raise ValueError(f"passthrough: {v} names a field twice")
        return v

    @model_validator(mode="after")
    def _gpu_precision(self) -> LabelConfig:
        if self.num_gpus > 0 and self.quantize == "int8":
            raise ValueError("quantize=int8 is a CPU option: with num_gpus > 0 use quantize=none "
                             "(bf16 on GPU)")
        if self.num_gpus > 0 and self.backend == "onnx":
            raise ValueError("backend=onnx runs on the CPU: with num_gpus > 0 use backend=torch or auto")
        return self

    # ------------------------------------------------------------------------------------------ helpers
    def check_required(self) -> None:
        """Raise ConfigError for a required setting left empty (checked before a run, not at build time,
        so ``--print-config`` works on a partial config)."""
        missing = []
        if not self.inputs:
            missing.append("inputs (e.g. inputs=news.jsonl)")
        if not self.model_dir:
            missing.append("model_dir (a directory written by `finsent finetune`)")
        if not self.output_dir:
            missing.append("output_dir (e.g. output_dir=labels/)")
        if missing:
            raise ConfigError("missing required setting(s): " + "; ".join(missing))

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"

    @property
    def threads(self) -> int:
        return self.torch_threads or max(1, round(self.num_cpus))

    def output_settings(self) -> dict[str, Any]:
        """The settings that change what is written; a resumed run must have the same ones."""
        return {
            "format": self.format,
            "text_fields": list(self.text_fields),
            "id_field": self.id_field,
            "passthrough": list(self.passthrough),
            "quantize": self.quantize,
            "backend": self.backend,
            "device": self.device,
            "output_format": self.output_format,
            "rows_per_shard": self.rows_per_shard,
        }
