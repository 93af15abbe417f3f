"""Typed results of the client's calls that are not tables."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["Rejection", "IngestResult", "ModelInfo", "Stats", "Readiness", "FeatureInfo", "FeatureView"]


@dataclass(frozen=True)
class Rejection:
    """One rejected event.

    Attributes:
        index: Position of the event in what was passed to ``ingest`` or
            ``backfill`` (0-based, over all batches).
        field: The offending field (``"user_id"``, ``"ts"``, ..., or ``"event"``).
        code: Stable code: ``missing``, ``too_long``, ``unknown_behavior``,
            ``too_old``, ``late``, ``future``, ``reserved``, ``unknown_field``, ...
        reason: Human-readable explanation from the server.
    """

    index: int
    field: str
    code: str
    reason: str


@dataclass
class IngestResult:
    """Outcome of ``Client.ingest`` or ``Client.backfill``.

    Attributes:
        accepted: Events made durable (each applied exactly once; resent
            events are accepted again and skipped as duplicates when applied).
        rejected: Number of rejected events.
        rejections: The rejected events with field, code and reason, in input
            order. Complete for ``ingest``; ``backfill`` lists the first 100
            the server reports (see ``rejections_truncated``).
        rejected_by_code: Rejected events counted by code.
    """

    accepted: int = 0
    rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    rejected_by_code: dict[str, int] = field(default_factory=dict)

    @property
    def rejections_truncated(self) -> bool:
        """True when the server reported fewer rejections than it counted."""
        return len(self.rejections) < self.rejected

    def _add(self, other: "IngestResult", offset: int = 0) -> None:
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.rejections += [Rejection(r.index + offset, r.field, r.code, r.reason) for r in other.rejections]
        for k, v in other.rejected_by_code.items():
            self.rejected_by_code[k] = self.rejected_by_code.get(k, 0) + v


def _float(v: Any) -> float:
    if v is None:
        return math.nan
    return float(v)  # the gateway sends NaN and Infinity as strings; float() reads both


def _int(v: Any) -> int:
    return 0 if v is None else int(v)  # int64 values come as JSON strings


def _time(v: Any) -> datetime | None:
    if not v:
        return None
    return datetime.fromisoformat(str(v).replace("Z", "+00:00"))


@dataclass(frozen=True)
class ModelInfo:
    """One model of ``GET /v1/models``. AUC and log loss are NaN until measured."""

    name: str
    version: int
    examples: int
    rolling_auc: float
    rolling_log_loss: float
    published_auc: float
    published_log_loss: float
    last_update: datetime | None
    frozen: bool

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ModelInfo":
        return cls(name=d["name"], version=_int(d.get("version")), examples=_int(d.get("examples")),
                   rolling_auc=_float(d.get("rolling_auc")), rolling_log_loss=_float(d.get("rolling_log_loss")),
                   published_auc=_float(d.get("published_auc")), published_log_loss=_float(d.get("published_log_loss")),
                   last_update=_time(d.get("last_update")), frozen=bool(d.get("frozen", False)))


@dataclass(frozen=True)
class Stats:
    """``GET /v1/stats``: log and apply progress and entity counts.

    ``max_event_ts`` and ``watermark`` are Unix milliseconds.
    """

    log_end_offset: int
    applied_offset: int
    events_applied: int
    duplicates_skipped: int
    users: int
    items: int
    max_event_ts: int
    watermark: int
    dead_letters: int

    @property
    def caught_up(self) -> bool:
        """Every accepted event is applied (and so readable)."""
        return self.applied_offset == self.log_end_offset

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Stats":
        return cls(**{k: _int(d.get(k)) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Readiness:
    """``GET /readyz``: whether the server is ready, and why not."""

    ready: bool
    detail: str

    def __bool__(self) -> bool:
        return self.ready


@dataclass(frozen=True)
class FeatureInfo:
    """One feature of a view: ``type`` is ``int64``, ``float64``, ``string``,
    ``timestamp_ms`` or ``list<string>``."""

    name: str
    type: str
    aggregation: str
    window: str
    versioned: bool
    description: str


@dataclass(frozen=True)
class FeatureView:
    """A feature view of ``GET /v1/feature-views``."""

    name: str
    entity: str
    id_column: str
    ttl: str
    features: list[FeatureInfo]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FeatureView":
        feats = [FeatureInfo(f["name"], f.get("type", ""), f.get("aggregation", ""), f.get("window", ""),
                             bool(f.get("versioned", False)), f.get("description", "")) for f in d.get("features", [])]
        return cls(d["name"], d.get("entity", ""), d.get("id_column", ""), d.get("ttl", ""), feats)

    def feature(self, name: str) -> FeatureInfo | None:
        return next((f for f in self.features if f.name == name), None)
