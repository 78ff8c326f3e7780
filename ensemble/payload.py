"""Particle payloads: per-particle CPU tensors and generator states, merged and split by rows.

A payload is what ``ParticleGroup.export`` returns: ``x``, ``x0``, ``status``, ``extra`` (a
dict of tensors) and ``generators`` (a list of byte tensors), all with one row per particle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Payload = dict[str, Any]
_TENSORS = ("x", "x0", "status")


def concat_payloads(payloads: Sequence[Payload]) -> Payload:
    """Rows of several payloads, in order."""
    return {
        **{key: torch.cat([p[key] for p in payloads]) for key in _TENSORS},
        "extra": {
            key: torch.cat([p["extra"][key] for p in payloads]) for key in payloads[0]["extra"]
        },
        "generators": [g for p in payloads for g in p["generators"]],
    }


def take_rows(payload: Payload, rows: Sequence[int]) -> Payload:
    """The payload's rows ``rows`` (repeats allowed)."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    return {
        **{key: payload[key][index] for key in _TENSORS},
        "extra": {key: value[index] for key, value in payload["extra"].items()},
        "generators": [payload["generators"][i] for i in index.tolist()],
    }


def nbytes(value: Any) -> int:
    """Bytes of the tensors inside nested dicts, lists and tuples (what crosses processes)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(nbytes(v) for v in value)
    return 0
