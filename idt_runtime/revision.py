"""Developer tool: autogenerate a migration for a service from its models.

python -m idt_runtime.revision contact_centre "add x"
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config

from .db import make_engine, migrate


def main(service: str, message: str) -> None:
    app_mod = importlib.import_module(f"services.{service}.app")
    spec = app_mod.SPEC
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/rev.db"
        engine = make_engine(url)
        migrate(engine, spec.migrations, f"{spec.prefix}_alembic_version")
        cfg = Config()
        cfg.set_main_option("script_location", str(spec.migrations))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            cfg.attributes["version_table"] = f"{spec.prefix}_alembic_version"
            command.revision(cfg, message=message, autogenerate=True)
    print("written under", Path(spec.migrations) / "versions")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
