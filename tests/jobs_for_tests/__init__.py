"""Job functions the tests enqueue for real worker processes (importable from the repo root)."""

from pathlib import Path


def fail_once_then_succeed(marker: str) -> str:
    """Fails on its first run and succeeds on the retry: the retry needs RQ's scheduler."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise RuntimeError("first attempt fails on purpose")
    return "succeeded on retry"


def sleep_then_return(seconds: float, started_marker: str) -> str:
    """A stand-in for a training: runs for ``seconds``, after noting that it started (appending a
    line per attempt, so a test can count the attempts)."""
    import time

    with Path(started_marker).open("a") as marker:
        marker.write(f"{time.time()}\n")
    time.sleep(seconds)
    return "done"
