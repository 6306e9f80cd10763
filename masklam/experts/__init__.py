"""Expert policies on proprioceptive state, trained with SAC, shipped as small checkpoints."""
