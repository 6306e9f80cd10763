"""masklam: latent action learning from video full of distractors."""

import os

# Headless rendering by default: it must be chosen before anything imports mujoco.
os.environ.setdefault("MUJOCO_GL", "egl")

# CUDA builds of torch (the sam extra's 2.14.1) bring triton, whose bundled LLVM crashes the process when
# it loads after Mesa's (llvmpipe renders our frames on CPUs) and torch imports it lazily, e.g. on making an
# optimiser. Loaded first, both live: 0.1 s, only where triton is installed.
try:
    import triton  # noqa: F401
except ImportError:
    pass

__version__ = "0.1.0"
