"""Pseudo-label threshold policies (pure numpy): fixed, DTM-R, FlexMatch, FreeMatch, SoftMatch, quantile, top-K,
precision target."""

from __future__ import annotations

from engine.thresholds.base import (
    NEVER,
    REGISTRY,
    ThresholdPolicy,
    apply_thresholds,
    masked_mean,
    register,
    split_probs,
    thresholds_from_json,
    thresholds_to_json,
    to_jsonable,
)
from engine.thresholds.distribution import QuantilePolicy, TopKPolicy
from engine.thresholds.dtm import MAPPINGS, DTMRPolicy, FlexMatchPolicy, learning_effect
from engine.thresholds.fixed import FixedPolicy
from engine.thresholds.freematch import FreeMatchPolicy, fairness_loss
from engine.thresholds.precision import PrecisionTargetPolicy
from engine.thresholds.registry import UnknownPolicy, available_policies, get_policy, policy_class
from engine.thresholds.softmatch import SoftMatchPolicy

__all__ = [
    "MAPPINGS",
    "NEVER",
    "REGISTRY",
    "DTMRPolicy",
    "FixedPolicy",
    "FlexMatchPolicy",
    "FreeMatchPolicy",
    "PrecisionTargetPolicy",
    "QuantilePolicy",
    "SoftMatchPolicy",
    "ThresholdPolicy",
    "TopKPolicy",
    "UnknownPolicy",
    "apply_thresholds",
    "available_policies",
    "fairness_loss",
    "get_policy",
    "learning_effect",
    "masked_mean",
    "policy_class",
    "register",
    "split_probs",
    "thresholds_from_json",
    "thresholds_to_json",
    "to_jsonable",
]
