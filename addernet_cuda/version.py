__version__ = "0.1.0"

# The torch stable ABI the compiled ops are built for (TORCH_TARGET_VERSION, set by setup.py):
# one build runs on this torch and every later one. pyproject.toml's torch requirement says the same.
STABLE_ABI = "2.11"


def target_version_define(stable_abi: str = STABLE_ABI) -> str:
    """The compiler flag that builds against the stable ABI of torch ``stable_abi`` ("2.11"):
    TORCH_TARGET_VERSION encoded as torch/headeronly/version.h encodes TORCH_ABI_VERSION,
    major << 56 | minor << 48 (patch 0). setup.py and the clang test use it; CMakeLists.txt
    computes the same from STABLE_ABI."""
    major, minor = (int(part) for part in stable_abi.split("."))
    return f"-DTORCH_TARGET_VERSION=0x{major:02x}{minor:02x}000000000000"
