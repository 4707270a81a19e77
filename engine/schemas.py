"""The parquet schemas of every committed file (docs/concepts.md, "Storage layout"), and the one function that builds
a score part.

Sources list rows as ``LISTING_SCHEMA``; ingest commits ``MANIFEST_SCHEMA`` parts and a ``QUARANTINE_SCHEMA`` table;
score parts follow :func:`score_schema`; the selection is ``SELECTION_SCHEMA``; training streams
``SUPERVISED_SCHEMA``; curation writes ``LABEL_ISSUES_SCHEMA``; exports write ``SAMPLE_SCHEMA`` (and
:func:`hf_sample_schema` for the Hugging Face parquet layout).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

LISTING_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("orig_path", pa.string()),
        ("locator", pa.string()),
        ("split", pa.string()),
        ("label", pa.int16()),
        ("group", pa.string()),
        ("frame", pa.int32()),
        ("valence", pa.float32()),
        ("arousal", pa.float32()),
        ("box", pa.list_(pa.int32())),
        ("reject", pa.string()),
    ]
)
"""``reject`` (``<reason>: <detail>``) marks a row the listing already refused (e.g. ``outside_root``): ingest
quarantines it without reading the file."""

MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("source", pa.string()),
        ("orig_path", pa.string()),
        ("sha256", pa.string()),
        ("phash", pa.uint64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("label", pa.int16()),
        ("split", pa.string()),
        ("group", pa.string()),
        ("frame", pa.int32()),
        ("valence", pa.float32()),
        ("arousal", pa.float32()),
        ("leak_with", pa.string()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("orig_path", pa.string()),
        ("split", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("duplicate_of", pa.string()),
    ]
)


def score_schema(num_classes: int, branches: int = 0, *, va: bool = False, features: int = 0) -> pa.Schema:
    """Schema of a score part (docs/concepts.md, "Storage layout"): ``branch_probs`` and ``disagreement`` with
    branches, ``valence`` and ``arousal`` with a VA head, ``features`` (raw parts of sequence teachers only)."""
    fields = [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("probs", pa.list_(pa.float32(), num_classes)),
        ("pred", pa.int16()),
        ("conf", pa.float32()),
        ("margin", pa.float32()),
        ("entropy", pa.float32()),
        ("teacher", pa.string()),
    ]
    if branches:
        fields.append(("branch_probs", pa.list_(pa.list_(pa.float32(), num_classes), branches)))
        fields.append(("disagreement", pa.float32()))
    if va:
        fields += [("valence", pa.float32()), ("arousal", pa.float32())]
    if features:
        fields.append(("features", pa.list_(pa.float32(), features)))
    return pa.schema(fields)


def score_table(
    keys: list[str],
    shard: str,
    probs: np.ndarray,
    teacher_id: str,
    *,
    branch_probs: np.ndarray | None = None,
    va: np.ndarray | None = None,
    features: np.ndarray | None = None,
    disagreement: str = "vote_entropy",
) -> pa.Table:
    """A score part of one shard from (N, C) probs, optional (N, M, C) branch probs, (N, 2) valence/arousal and
    (N, D) features."""
    from engine.disagreement import branch_disagreement

    probs = probs.astype(np.float32, copy=False)
    c = probs.shape[1]
    data: dict[str, Any] = {
        "key": keys,
        "shard": [shard] * len(keys),
        "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), c),
        **score_columns(probs),
        "teacher": [teacher_id] * len(keys),
    }
    branches = 0
    if branch_probs is not None:
        bp = branch_probs.astype(np.float32, copy=False)
        branches = bp.shape[1]
        inner = pa.FixedSizeListArray.from_arrays(pa.array(bp.ravel()), c)
        data["branch_probs"] = pa.FixedSizeListArray.from_arrays(inner, branches)
        data["disagreement"] = branch_disagreement(bp, disagreement)
    if va is not None:
        data["valence"] = va[:, 0].astype(np.float32)
        data["arousal"] = va[:, 1].astype(np.float32)
    dim = 0
    if features is not None:
        dim = features.shape[1]
        data["features"] = pa.FixedSizeListArray.from_arrays(pa.array(features.astype(np.float32).ravel()), dim)
    return pa.table(data, schema=score_schema(c, branches, va=va is not None, features=dim))


def score_columns(probs: np.ndarray) -> dict[str, np.ndarray]:
    """pred, conf, margin (top-1 minus top-2) and entropy (nats) of probabilities (N, C)."""
    probs = probs.astype(np.float32, copy=False)
    top2 = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] > 1 else np.concatenate([np.zeros_like(probs), probs], 1)
    ent = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(1)
    return {
        "pred": probs.argmax(1).astype(np.int16),
        "conf": top2[:, 1].astype(np.float32),
        "margin": (top2[:, 1] - top2[:, 0]).astype(np.float32),
        "entropy": ent.astype(np.float32),
    }


SELECTION_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("label", pa.int16()),
        ("conf", pa.float32()),
        ("weight", pa.float32()),
        ("repeat", pa.int16()),
        ("policy", pa.string()),
        ("round", pa.int16()),
    ]
)


SUPERVISED_SCHEMA = pa.schema(
    [
        ("image", pa.binary()),
        ("label", pa.int64()),
        ("weight", pa.float32()),
        ("strong", pa.bool_()),
        ("valence", pa.float32()),
        ("arousal", pa.float32()),
        ("target", pa.binary()),
    ]
)
"""Columns of the supervised stream the workers read; valence/arousal are NaN where the row has no VA label;
``target`` is a soft label (C float32, little-endian) or empty where the row learns its ``label``."""


SAMPLE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("label", pa.int16()),
        ("label_name", pa.string()),
        ("origin", pa.string()),
        ("source", pa.string()),
        ("orig_path", pa.string()),
        ("shard", pa.string()),
        ("confidence", pa.float32()),
        ("threshold", pa.float32()),
        ("policy", pa.string()),
        ("weight", pa.float32()),
        ("repeat", pa.int16()),
        ("round", pa.int16()),
        ("file_name", pa.string()),
    ]
)
"""One row per exported sample; ``confidence``, ``threshold`` and ``policy`` are null for labelled samples."""

HF_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
"""How Hugging Face ``datasets`` stores its ``Image`` feature in Arrow / parquet: encoded bytes and a file name."""

_HF_DTYPES = {"float": "float32", "double": "float64", "halffloat": "float16"}
"""Arrow type names that ``datasets.Value`` spells differently (the others, e.g. ``int16``, ``string``, agree)."""


def hf_sample_schema(names: list[str]) -> pa.Schema:
    """``SAMPLE_SCHEMA`` as a ``datasets``-loadable parquet schema: ``image`` (:data:`HF_IMAGE_TYPE`) first and
    ``label`` as int64, with the ``datasets`` features in the schema metadata (key ``huggingface``).

    ``datasets`` takes a feature from that metadata only where its Arrow type equals the column's, which is why
    ``label`` is int64 (``ClassLabel``) here and int16 in ``SAMPLE_SCHEMA``.
    """
    fields = [
        pa.field("image", HF_IMAGE_TYPE),
        pa.field("label", pa.int64()),
        SAMPLE_SCHEMA.field("label_name"),
        *(f for f in SAMPLE_SCHEMA if f.name not in ("label", "label_name")),
    ]
    features: dict[str, Any] = {"image": {"_type": "Image"}, "label": {"names": list(names), "_type": "ClassLabel"}}
    for f in fields[2:]:
        features[f.name] = {"dtype": _HF_DTYPES.get(str(f.type), str(f.type)), "_type": "Value"}
    meta = json.dumps({"info": {"features": features}}).encode()
    return pa.schema(fields, metadata={b"huggingface": meta})


REVIEW_BATCH_SCHEMA = pa.schema(
    [
        ("rank", pa.int32()),
        ("key", pa.string()),
        ("shard", pa.string()),
        ("source", pa.string()),
        ("image", pa.string()),
        ("rule", pa.string()),
        ("score", pa.float64()),
        ("teacher_label", pa.int16()),
        ("teacher_conf", pa.float32()),
        ("given_label", pa.int16()),
    ]
)
"""A review batch (``<round>/review/batch.parquet``), in the order faces were chosen: ``image`` relative to the
export folder, ``score`` the rule's value, ``teacher_label`` the guess shown to people (-1: none), ``given_label`` the
label a labelled face has now (-1: a pool face)."""

ANSWERS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("source", pa.string()),
        ("label", pa.int16()),
        ("answer", pa.string()),
        ("given_label", pa.int16()),
        ("teacher_label", pa.int16()),
        ("votes", pa.string()),
        ("annotators", pa.list_(pa.string())),
        ("submitted", pa.int16()),
        ("cancelled", pa.int16()),
        ("first_at", pa.string()),
        ("last_at", pa.string()),
        ("lead_time_s", pa.float32()),
        ("round", pa.int16()),
        ("rule", pa.string()),
        ("score", pa.float64()),
        ("batch", pa.string()),
    ]
)
"""People's answers to one batch (``<round>/answers/answers.parquet``), one row per face of the batch: ``label`` the
class people gave (-1: none: see ``answer``), ``votes`` a JSON object choice → count, ``annotators`` their ids."""

REVIEWED_LABELLED_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("source", pa.string()),
        ("label", pa.int16()),
        ("origin", pa.string()),
        ("old_label", pa.int16()),
        ("review_round", pa.int16()),
    ]
)
"""A round's labelled set with people's answers (``<round>/reviewed/labelled.parquet``): ``origin`` ``labelled`` (the
partition's) or ``reviewed`` (a pool face people labelled); ``old_label`` the label before people changed it (-1:
unchanged or new); ``review_round`` the round whose batch gave the label (-1: none)."""


LABEL_ISSUES_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("given_label", pa.int16()),
        ("given_name", pa.string()),
        ("suggested_label", pa.int16()),
        ("suggested_name", pa.string()),
        ("quality", pa.float32()),
        ("given_prob", pa.float32()),
        ("fold", pa.int16()),
    ]
)
"""``quality`` is cleanlab's self-confidence label quality in [0, 1] (low = likely wrong); ``suggested_label`` is the
out-of-fold argmax."""
