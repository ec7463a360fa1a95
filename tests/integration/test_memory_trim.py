"""Memory threads free goes back to the system (glibc's malloc_trim), and every
service does it on its own every IDT_MEMORY_TRIM_S seconds."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time

from fastapi.testclient import TestClient

from idt_runtime import memory
from services.contact_centre.app import ContactCentreSettings, create_app
from tests.conftest import wait_for
from tests.helpers import TEST_KEY

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Four threads each allocate 180 MB in 3 kB blocks (malloc's, not Python's small
# object allocator) and keep one block in fifty: what is left is spread over every
# arena, so glibc can give little back by itself.
_FRAGMENT = """
import json, threading
from idt_runtime import memory
keep = []
def work():
    blocks = [bytes(3000) for _ in range(60_000)]
    keep.extend(blocks[::50])
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
before = memory.resident_bytes()
done = memory.trim()
after = memory.resident_bytes()
print(json.dumps({"before": before, "after": after, "kept": len(keep),
                  "released": None if done is None else done.released}))
"""


def test_trim_gives_back_what_threads_freed():
    """In a process of its own, so that what this test process holds does not count."""
    out = subprocess.run(
        [sys.executable, "-c", _FRAGMENT], capture_output=True, text=True, check=True, timeout=120
    )
    r = json.loads(out.stdout)
    assert r["kept"] == 4 * 1200
    if not GLIBC:
        assert r["released"] is None and not memory.can_trim()
        return
    mib = 2**20
    assert r["before"] > 400 * mib  # the freed blocks were still resident
    assert r["after"] < r["before"] - 300 * mib  # ... and went back
    assert abs(r["released"] - (r["before"] - r["after"])) < 4 * mib  # what it reports


def _sample(metrics: str, name: str) -> float | None:
    for line in metrics.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_service_trims_its_memory_on_its_own(redis_url, var_dir):
    settings = ContactCentreSettings(
        redis_url=redis_url, var_dir=var_dir, environment="test", customer_ref_key=TEST_KEY,
        memory_trim_s=0.05,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        if GLIBC:
            wait_for(
                lambda: (_sample(client.get("/metrics").text, "idt_memory_trim_seconds_total")
                         or 0) > 0,
                timeout=10,
            )  # fmt: skip
            text = client.get("/metrics").text
            assert _sample(text, "idt_memory_trim_released_bytes_total") is not None
        else:  # nothing to call: no loop, no samples
            assert _sample(client.get("/metrics").text, "idt_memory_trim_seconds_total") is None

    off = settings.model_copy(update={"memory_trim_s": 0.0})
    with TestClient(create_app(off)) as client:
        time.sleep(0.3)  # a loop would have run several times
        text = client.get("/metrics").text
        assert _sample(text, "idt_memory_trim_seconds_total") is None
