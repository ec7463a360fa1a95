"""The services `idt up` runs: one line each.

A new service is one more `Service(...)` line below; `idt up` then starts it by
default and grows a `--port-<name>` option (env `IDT_PORT_<NAME>`) for it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Service:
    name: str
    #: The ASGI app factory, `module:function`, run with `uvicorn --factory`.
    factory: str
    default_port: int
    #: Paths worth opening once the service runs (shown by `idt up`); `{month}`
    #: is replaced by the current month, `YYYY-MM`.
    examples: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return self.factory.partition(":")[0]

    @property
    def port_option(self) -> str:
        return "--port-" + self.name.replace("_", "-")

    @property
    def port_env(self) -> str:
        return "IDT_PORT_" + self.name.upper()

    def is_installed(self) -> bool:
        """Whether the service's module can be imported (without importing it)."""
        try:
            return importlib.util.find_spec(self.module) is not None
        except ModuleNotFoundError:
            return False


SERVICES: tuple[Service, ...] = (
    Service("contact_centre", "services.contact_centre.app:create_app", 8001,
            ("/v1/reports/jp-process",)),
    Service("bdc", "services.bdc.app:create_app", 8002, ("/v1/aact?period={month}",)),
    Service("scheduler", "services.scheduler.app:create_app", 8003,
            ("/v1/jobcentres/JC0101/windows?status=open",)),
    Service("scoring", "services.scoring.app:create_app", 8004,
            ("/v1/scores?level=district&basis=measured",)),
)  # fmt: skip

BY_NAME: dict[str, Service] = {s.name: s for s in SERVICES}
