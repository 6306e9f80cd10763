"""masklam: latent action learning from video full of distractors."""

import os

# Headless rendering by default: it must be chosen before anything imports mujoco.
os.environ.setdefault("MUJOCO_GL", "egl")

__version__ = "0.1.0"
