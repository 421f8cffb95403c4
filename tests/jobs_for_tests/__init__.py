"""Job functions the tests enqueue for real worker processes (importable from the repo root)."""

from pathlib import Path


def fail_once_then_succeed(marker: str) -> str:
    """Fails on its first run and succeeds on the retry: the retry needs RQ's scheduler."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise RuntimeError("first attempt fails on purpose")
    return "succeeded on retry"
