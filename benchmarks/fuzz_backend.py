"""The long run of the backend's no-5xx property: hostile and careless requests (the strategies of
``tests/backend_requests.py``, the same the suite's property-based test draws fewer of) sent over
HTTP to ``fracture-al serve`` (gunicorn, the shipped model, a local image root holding a
decompression bomb, corrupt, truncated and 16-bit images), counted by status.

    python -m benchmarks.fuzz_backend --requests 10000 --minutes 30 \\
        --out benchmarks/reported/backend_fuzz.json

Needs a Redis (REDIS_URL, default the machine's, database 11; the run's keys carry their own
prefix and are removed after). Exit status 1 if any request got a 5xx or the server died.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis
import requests
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings

from fracture_al.integrations.loopback import free_port, wait_until_answering
from tests.backend_requests import RawRequest, raw_requests, write_image_files


def serve(home: Path, image_root: Path, redis_url: str, prefix: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "FRACTURE_AL_HOME": str(home), "FRACTURE_AL_DEVICE": "cpu", "REDIS_URL": redis_url,
           "FRACTURE_AL_LOCAL_IMAGE_ROOT": str(image_root), "FRACTURE_AL_QUEUE_PREFIX": prefix,
           "FRACTURE_AL_ALLOWED_IMAGE_HOSTS": json.dumps(["localhost"]),
           "FRACTURE_AL_IMAGE_FETCH_TIMEOUT": "2"}  # fmt: skip
    command = [sys.executable, "-m", "fracture_al", "serve", "--port", str(port), "--workers", "2"]
    process = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    if not wait_until_answering(f"{url}/health", timeout=120, process=process):
        raise SystemExit(f"the backend did not start; see {log}")
    return process, url


def fuzz(url: str, count: int, minutes: float) -> dict:
    statuses: Counter[int] = Counter()
    server_errors: list[dict] = []
    deadline = time.monotonic() + 60 * minutes
    session = requests.Session()

    @hypothesis_settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
                         suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(request=raw_requests())
    def send(request: RawRequest) -> None:
        if time.monotonic() > deadline:
            return
        headers = {"Content-Type": request.content_type} if request.content_type else {}
        reply = session.post(url + request.route, data=request.body, headers=headers, timeout=60)
        statuses[reply.status_code] += 1
        if reply.status_code >= 500 and len(server_errors) < 20:
            server_errors.append({"route": request.route, "body": request.body[:500].decode("latin-1"),
                                  "status": reply.status_code, "reply": reply.text[:500]})  # fmt: skip
        total = sum(statuses.values())
        if total % 500 == 0:
            print(f"{total} requests: {dict(sorted(statuses.items()))}", flush=True)

    started = time.monotonic()
    send()
    return {"requests": sum(statuses.values()), "seconds": round(time.monotonic() - started, 1),
            "by_status": {str(k): v for k, v in sorted(statuses.items())},
            "server_errors": sum(v for k, v in statuses.items() if k >= 500),
            "examples_of_5xx": server_errors}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=30.0, help="Stop sending after this long.")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/11"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    prefix = f"fal-fuzz-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        process, url = serve(work / "home", write_image_files(work / "images"), args.redis_url, prefix,
                             work / "serve.log")  # fmt: skip
        try:
            result = fuzz(url, args.requests, args.minutes)
            result["server_alive"] = process.poll() is None
            log_text = (work / "serve.log").read_text()
            result["tracebacks_in_log"] = log_text.count("Traceback")
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
            connection = redis.Redis.from_url(args.redis_url)
            for key in connection.scan_iter(match=f"*{prefix}*"):
                connection.delete(key)
    result["command"] = "python -m benchmarks.fuzz_backend " + " ".join(sys.argv[1:])
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(1 if result["server_errors"] or not result["server_alive"] else 0)


if __name__ == "__main__":
    main()
