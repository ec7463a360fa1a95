"""Bad input, fuzzed (issue 5, item 6): the contract decoder and every service's HTTP API.

Shared knobs of the fuzz tests. Under CI (`CI` set to anything but "", "0" or "false")
every fuzz test is derandomized with modest example counts, so a red CI run is
reproduced exactly by `CI=true python -m pytest tests/fuzz`. Locally the examples are
random and more numerous; `IDT_FUZZ_SCALE` multiplies the counts (e.g. 10 for a long
soak) and `IDT_FUZZ_SEED` pins the seed of a local run.
"""

from __future__ import annotations

import os

CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")

#: The seed of a local run (None: random); CI runs are derandomized instead.
SEED: int | None = int(os.environ["IDT_FUZZ_SEED"]) if os.environ.get("IDT_FUZZ_SEED") else None

_SCALE = float(os.environ.get("IDT_FUZZ_SCALE", "1"))


def examples(ci: int, local: int) -> int:
    """How many examples a test generates: `ci` under CI, else `local` (scaled)."""
    return ci if CI else max(1, round(local * _SCALE))


#: NI numbers in the shapes people type them; none of them may come back in an
#: error body or reach the dead letters.
NINOS = ["JT123456C", "jt123456c", "JT 12 34 56 C", "AB-12-34-56-D", "ZX.12.34.56.A"]
