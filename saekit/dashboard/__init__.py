"""A static HTML dashboard of a run's features (`saekit dashboard RUN_DIR`)."""

from saekit.dashboard.build import build_dashboard, steering_curves

__all__ = ["build_dashboard", "steering_curves"]
