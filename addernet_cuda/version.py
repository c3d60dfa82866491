__version__ = "0.1.0"

# The torch stable ABI the compiled ops are built for (TORCH_TARGET_VERSION, set by setup.py):
# one build runs on this torch and every later one. pyproject.toml's torch requirement says the same.
STABLE_ABI = "2.11"
