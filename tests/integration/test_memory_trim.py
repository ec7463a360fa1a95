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

# Four threads each allocate 90 MB in 3 kB blocks (malloc's, not Python's small
# object allocator) and keep one block in fifty: what is left is spread over every
# arena, so glibc can give little back by itself.
_FRAGMENT = """
import json, threading
from idt_runtime import memory
keep = []
def work():
    blocks = [bytes(3000) for _ in range(30_000)]
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
    assert r["kept"] == 4 * 600
    if not GLIBC:
        assert r["released"] is None and not memory.can_trim()
        return
    mib = 2**20
    assert r["before"] > 200 * mib  # the freed blocks were still resident
    assert r["after"] < r["before"] - 150 * mib  # ... and went back
    assert abs(r["released"] - (r["before"] - r["after"])) < 4 * mib  # what it reports


def _sample(metrics: str, name: str) -> float | None:
    for line in metrics.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_service_trims_its_memory_on_its_own(redis_url, var_dir, monkeypatch):
    """In a thread, not on the event loop; a trim that fails is logged and the next
    one runs all the same; at 0 there is no trimming at all."""
    import asyncio

    calls: list[str] = []
    real = memory.trim

    def trim() -> memory.Trimmed | None:
        try:
            asyncio.get_running_loop()
            calls.append("on the event loop")
        except RuntimeError:
            calls.append("in a thread")
        if len(calls) == 1:
            raise OSError("the first trim fails")
        return real()

    monkeypatch.setattr(memory, "trim", trim)
    settings = ContactCentreSettings(
        redis_url=redis_url, var_dir=var_dir, environment="test", customer_ref_key=TEST_KEY,
        memory_trim_s=1.0,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        if GLIBC:
            wait_for(
                lambda: (_sample(client.get("/metrics").text, "idt_memory_trim_seconds_total")
                         or 0) > 0,
                timeout=15,
            )  # fmt: skip
            assert len(calls) >= 2 and set(calls) == {"in a thread"}
        else:  # nothing to call: no loop, no samples
            time.sleep(1.5)
            assert not calls
            assert _sample(client.get("/metrics").text, "idt_memory_trim_seconds_total") is None

    calls.clear()
    off = settings.model_copy(update={"memory_trim_s": 0.0})
    with TestClient(create_app(off)) as client:
        time.sleep(0.3)  # a loop would have begun (its counters are made at once)
        text = client.get("/metrics").text
        assert _sample(text, "idt_memory_trim_seconds_total") is None and not calls
