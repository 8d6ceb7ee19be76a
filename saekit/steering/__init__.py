"""Steering with learned features and a judge-free steering score (docs/steering.md)."""

from saekit.steering.api import (
    feature_edit,
    feature_edits,
    resolve_dictionary,
    steer,
    steer_generate,
)
from saekit.steering.calibrate import Calibration, calibrate
from saekit.steering.directions import Direction
from saekit.steering.evaluate import run_steering_eval, steering_table
from saekit.steering.interventions import AddDirection, ClampFeature
from saekit.steering.protocol import SiteStudy, SteeringConfig

__all__ = [
    "AddDirection",
    "Calibration",
    "ClampFeature",
    "Direction",
    "SiteStudy",
    "SteeringConfig",
    "calibrate",
    "feature_edit",
    "feature_edits",
    "resolve_dictionary",
    "run_steering_eval",
    "steer",
    "steer_generate",
    "steering_table",
]
