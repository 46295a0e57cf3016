"""Network-wide hyperparameters: one JSON file per network, loaded into one pydantic model.

Every node of a run must load the same file; its hash is part of the run id, so nodes with
different settings write to different object namespaces and never mix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PRESET_DIR = Path(__file__).resolve().parent.parent / "hparams"


class HparamsError(ValueError):
    """A hyperparameter file is missing, unreadable or invalid; the message names the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """Llama architecture built from scratch with transformers (no downloads)."""

    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    max_seq_len: int = Field(gt=0)
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    tokenizer: str = Field(
        default="", max_length=128,
        description="the public tokenizer the run's shards are encoded with (docs/data.md); checked against the dataset's header",
    )


class TrainingConfig(_Strict):
    """The inner loop each miner runs per window (AdamW, warm-up + cosine, grad clipping)."""

    inner_steps: int = Field(gt=0)
    batch_size: int = Field(gt=0, description="sequences per inner step")
    seq_len: int = Field(gt=0)
    lr: float = Field(gt=0)
    min_lr_ratio: float = Field(ge=0, le=1, default=0.1)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(ge=0, default=0.1)
    warmup_steps: int = Field(ge=0, description="warm-up in inner steps, counted across windows")
    total_steps: int = Field(gt=0, description="cosine schedule length in inner steps")
    grad_clip: float = Field(gt=0, default=1.0)


class CodecConfig(_Strict):
    """SparseLoCo compression of pseudo-gradients."""

    chunk_size: int = Field(gt=0, default=64, description="largest tile side; 64 → 64×64 tiles")
    topk_per_chunk: int = Field(gt=0, default=64, description="kept values per 4096-element chunk")
    ef_beta: float = Field(gt=0, le=1, default=0.95, description="error-feedback decay")
    max_payload_bytes: int = Field(gt=0, description="readers refuse anything larger (HEAD first)")


class OuterConfig(_Strict):
    outer_lr: float = Field(gt=0, default=1.0)
    gather_peers: int = Field(gt=0, default=20)
    reserve_peers: int = Field(ge=0, default=10)


class WindowConfig(_Strict):
    blocks_per_window: int = Field(gt=0)
    upload_slot_seconds: float = Field(gt=0, description="upload counts if LastModified is inside")


class ScoringConfig(_Strict):
    openskill_beta: float = Field(gt=0, default=7.0)
    openskill_tau: float = Field(ge=0, default=0.1)
    rating_group_size: int = Field(gt=1, default=8, description="players per Plackett-Luce match")
    loss_ema_alpha: float = Field(gt=0, le=1, default=0.3, description="EMA weight of a new LossScore")
    copy_overlap_threshold: float = Field(gt=0, le=1, default=0.9)
    eval_batches: int = Field(gt=0, default=2, description="batches per loss measurement")
    stage_eval_factor: int = Field(
        ge=1, le=8, default=2,
        description="a pipeline stage is measured on this many times eval_batches: it carries part of a"
        " replica's update, so a smaller own-data edge (docs/scoring.md, Pipeline stages)",
    )
    windows_per_weights: int = Field(
        gt=0, default=1, description="wish; the chain's WeightsSetRateLimit decides (neurons.weights_schedule)"
    )
    weights_version_key: int = Field(
        ge=0, default=0, description="passed on set_weights; the chain refuses one older than its WeightsVersionKey"
    )
    burn_fraction: float = Field(ge=0, le=1, default=0.5)
    burn_uid: int | None = Field(ge=0, default=0, description="receives the burned share (subnet owner)")
    gather_tier_share: float = Field(ge=0, le=1, default=0.75)
    reserve_decay: float = Field(gt=0, le=1, default=0.5)
    # payment gates (scoring.weights): evidence of contribution, not just a positive ordinal
    stale_windows: int = Field(ge=0, default=2, description="paid only if evaluated this recently")
    min_sync_score: float = Field(ge=0, le=1, default=0.5)
    evidence_decay: float = Field(
        gt=0, lt=1, default=0.7, description="d: a window a windows old weighs d^a in the unique-data Z"
    )
    evidence_threshold: float = Field(
        ge=0, default=2.33, description="paid only when the unique-data Z exceeds this (docs/scoring.md)"
    )
    copy_memory_windows: int = Field(ge=0, default=3, description="earlier windows kept for copy checks")


class CheckpointConfig(_Strict):
    interval_windows: int = Field(gt=0)
    retention_windows: int = Field(gt=0)


class BoundsConfig(_Strict):
    """Limits every node applies alone to a peer's numbers, however many honest peers there are
    (``protocol.acceptance``). Calibrated on the project's own model, data, trainer and codec
    (docs/security.md, "Value bounds"): honest updates stay well inside them from window 0 on.

    A payload value is the error-feedback buffer at a kept coordinate. AdamW moves a coordinate
    by about ``lr`` per inner step at most, and the buffer sums a window's drift with decay
    ``ef_beta``, so |value| <= lr x inner_steps / (1 - ef_beta); ``value_bound_factor`` is the
    headroom over that.
    """

    value_bound_factor: float = Field(gt=0, default=2.0, description="x lr x H / (1 - ef_beta)")
    max_update_ratio: float = Field(
        gt=0, default=1.0, description="per parameter, ||update|| <= ratio x ||θ|| + one value bound"
    )
    clip_update_ratio: float = Field(
        gt=0, default=0.4,
        description="aggregation caps each peer's update at ratio x ||θ|| + one value bound, per parameter",
    )
    max_abs_param: float = Field(
        gt=0, default=1.0e3, description="largest |θ| in a checkpoint, local state or after an outer step"
    )


class RolesConfig(_Strict):
    """Who counts as a validator (``protocol.roles``); miners are defined by setting no weights."""

    validator_min_stake: float = Field(
        ge=0, default=1.0, description="stake a permit holder needs for its weights to steer the gather set"
    )


class PipelineConfig(_Strict):
    """Pipeline replicas (``pipeline``, docs/pipeline.md): a group of weak machines runs one
    replica as contiguous layer slices and sends subspace coordinates across stage boundaries."""

    subspace_dim: int = Field(gt=0, description="k: residual-writing projections live in a fixed k-dim subspace")
    basis_seed_tag: str = Field(
        default="tessera-subspace", min_length=1, max_length=64,
        description="mixed with the run seed to derive the frozen basis every node computes alone",
    )
    boundary: Literal["exact", "projected", "adaptive"] = Field(
        default="adaptive",
        description="exact: a stage keeps its residual writers in span(U), so boundaries rebuild exactly; "
        "projected: weights stay free and only the boundary is projected onto the seeded U; "
        "adaptive: as projected, onto the window's top-k principal directions the upstream stage sends "
        "(docs/pipeline.md 'Which boundary')",
    )


class Hparams(_Strict):
    name: str
    seed: int = 0
    model: ModelConfig
    training: TrainingConfig
    codec: CodecConfig
    outer: OuterConfig
    window: WindowConfig
    scoring: ScoringConfig
    checkpoint: CheckpointConfig
    bounds: BoundsConfig = BoundsConfig()
    roles: RolesConfig = RolesConfig()
    pipeline: PipelineConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Hparams:
        if self.training.seq_len > self.model.max_seq_len:
            raise ValueError("training.seq_len exceeds model.max_seq_len")
        if self.model.hidden_size % self.model.num_heads:
            raise ValueError("model.hidden_size must be divisible by model.num_heads")
        if self.model.num_heads % self.model.num_kv_heads:
            raise ValueError("model.num_heads must be divisible by model.num_kv_heads")
        if self.checkpoint.retention_windows < 2 * self.checkpoint.interval_windows:
            raise ValueError("checkpoint.retention_windows must be >= 2 x interval_windows")
        if self.pipeline is not None and self.pipeline.subspace_dim >= self.model.hidden_size:
            raise ValueError("pipeline.subspace_dim must be below model.hidden_size (else nothing is compressed)")
        return self

    @property
    def max_abs_value(self) -> float:
        """The largest |value| a payload may carry (``BoundsConfig``)."""
        t = self.training
        # ef_beta = 1 (no decay) sums without limit; count it as 0.999 so the bound stays finite
        return self.bounds.value_bound_factor * t.lr * t.inner_steps / (1.0 - min(self.codec.ef_beta, 0.999))

    @property
    def digest(self) -> str:
        """Stable hash of the settings (canonical JSON), independent of file formatting."""
        # A run without a pipeline section hashes as before the section existed (same run ids).
        dumped = self.model_dump(mode="json", exclude={"pipeline"} if self.pipeline is None else None)
        canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def run_id(self) -> str:
        return f"{self.name}-{self.digest[:12]}"


def load_hparams(name_or_path: str | Path) -> Hparams:
    """Load a preset by name (``tiny``) or a JSON file by path; unknown keys are errors."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise HparamsError(f"hparams file not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise HparamsError(f"hparams file {path} is not valid JSON: {exc}") from exc
    try:
        return Hparams.model_validate(raw)
    except ValidationError as exc:
        raise HparamsError(f"hparams file {path} is invalid: {exc}") from exc
