"""Agent masks for a dataset from segmentation models: SAM-family backends, prompting, distillation,
derived (degraded) sources, and comparison against a reference source."""
