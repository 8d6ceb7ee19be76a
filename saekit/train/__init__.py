"""Training: optimizer and schedules, dead latents, L0 control, checkpoints and resume."""
