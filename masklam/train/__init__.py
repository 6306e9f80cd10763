"""Training: data loading for latent action models and the stages after them."""
