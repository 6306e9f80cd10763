"""masklam: latent action learning from video full of distractors."""

__version__ = "0.1.0"
