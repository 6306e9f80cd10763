import os

# Headless rendering for every test, whichever module imports mujoco first.
os.environ.setdefault("MUJOCO_GL", "egl")
