"""The environment for worker subprocesses in crash and fault tests: short timings (kept in
the ratios the settings require), JSON logs, and a directory the recording handlers write to."""

from __future__ import annotations

import os
from pathlib import Path


def fast_worker_env(redis_url: str, records: Path) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "WORKER_"))},
            "REDIS_URL": redis_url, "WORKER_BLOCK_TIMEOUT_MS": "300", "WORKER_METRICS_PORT": "0",
            "LOG_FORMAT": "json", "TEST_RECORD_DIR": str(records), "CLAIM_MIN_IDLE_MS": "500",
            "HEARTBEAT_TTL_MS": "1000", "LEASE_MS": "2000", "RETRY_BASE_SECONDS": "0.1",
            # Retry tests fail every message's first attempt on purpose, which the handler
            # outage breaker rightly takes for an outage (and then never lets the attempt
            # grow): it is off here and tested on its own (test_worker_outage.py).
            "HANDLER_OUTAGE_FAILURES": "0"}
