"""Generate the published contract documents from the code:

- `docs/contract/schemas/<type>.schema.json`: a JSON Schema (2020-12) per event type;
- `docs/contract/asyncapi.json`: an AsyncAPI 3.0 document of every stream, its
  messages, and which service sends and receives what.

    python -m idt_contract.export           # write
    python -m idt_contract.export --check   # exit 1 if the committed files drifted

Which services consume what is read from their appliers; what they publish from
their `PUBLISHES` tuples, so the document cannot drift from the code without the
drift test failing.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .events import EVENT_CLASSES
from .streams import ALERTS_PREFIX, DATA_FIELD, DEAD_LETTERS, stream_for

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "contract"
SERVICES = ("contact_centre", "bdc", "scheduler", "scoring")


def _class_name(event_type: str) -> str:
    return "".join(p.capitalize() for p in event_type.split("-"))


def event_schema(cls: type[Any]) -> dict[str, Any]:
    schema = cls.model_json_schema(mode="validation")
    etype = cls.event_type()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://idt.example/contract/v1/{etype}.schema.json",
        "title": f"{etype} (CloudEvents 1.0, JSON structured mode)",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def json_schemas() -> dict[str, dict[str, Any]]:
    return {cls.event_type(): event_schema(cls) for cls in EVENT_CLASSES}


def _service_io() -> dict[str, dict[str, list[str]]]:
    """{service: {"receives": [stream...], "sends": [stream...]}} from the code."""
    io: dict[str, dict[str, list[str]]] = {}
    for name in SERVICES:
        try:
            mod = importlib.import_module(f"services.{name}.handlers")
        except ModuleNotFoundError:
            continue
        receives = sorted(consumed_streams(mod) or ())
        sends = sorted(getattr(mod, "PUBLISHES", ()))
        io[name] = {"receives": receives, "sends": sends}
    return io


def consumed_streams(mod: Any) -> list[str] | None:
    """The streams a service's handlers module consumes: its `APPLIERS`, or those of
    a class there with `appliers()` (the scheduler binds its appliers to its
    configuration: `Scheduler().appliers()`). None when it has neither."""
    appliers = getattr(mod, "APPLIERS", None)
    if isinstance(appliers, Mapping):
        return list(appliers)
    for obj in vars(mod).values():
        if (
            isinstance(obj, type)
            and obj.__module__ == mod.__name__
            and callable(getattr(obj, "appliers", None))
        ):
            found = obj().appliers()
            if isinstance(found, Mapping):
                return list(found)
    return None


def asyncapi() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    channel_of_stream: dict[str, str] = {}
    for cls in EVENT_CLASSES:
        etype = cls.event_type()
        name = _class_name(etype)
        s = cls.model_json_schema(ref_template="#/components/schemas/{model}")
        for def_name, d in s.pop("$defs", {}).items():
            schemas[def_name] = d
        schemas[name] = s
        messages[name] = {
            "name": etype,
            "title": etype,
            "contentType": "application/json",
            "summary": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else etype,
            "description": f"One stream entry with the single field `{DATA_FIELD}` holding "
            "the UTF-8 JSON of this CloudEvent.",
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
        if etype == "window-alert":
            channels["window-alerts"] = {
                "address": ALERTS_PREFIX + "{office_id}",
                "title": "Window alerts, one stream per office",
                "parameters": {"office_id": {"description": "The office the alert is for."}},
                "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            }
            channel_of_stream[ALERTS_PREFIX + "{office_id}"] = "window-alerts"
        else:
            channels[etype] = {
                "address": stream_for(etype),
                "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            }
            channel_of_stream[stream_for(etype)] = etype
    messages["DeadLetter"] = {
        "name": "dead-letter",
        "title": "dead-letter",
        "summary": "An entry a consumer could not accept, with why.",
        "description": "Fields: reason, source_stream, entry_id, group, consumer, failed_at, "
        "and each original field byte for byte as `original:<field>`.",
        "payload": {
            "type": "object",
            "properties": {
                k: {"type": "string"}
                for k in ("reason", "source_stream", "entry_id", "group", "consumer", "failed_at")
            },
            "required": ["reason", "source_stream", "entry_id", "group"],
            "additionalProperties": True,
        },
    }
    channels["dead-letters"] = {
        "address": DEAD_LETTERS,
        "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
    }
    channel_of_stream[DEAD_LETTERS] = "dead-letters"

    operations: dict[str, Any] = {}
    for service, io in _service_io().items():
        for action, streams in (("receive", io["receives"]), ("send", io["sends"])):
            for stream in streams:
                ch = channel_of_stream.get(stream)
                if ch is None:
                    continue
                operations[f"{service}.{action}.{ch}"] = {
                    "action": action,
                    "channel": {"$ref": f"#/channels/{ch}"},
                    "title": f"{service} {action}s {stream}",
                    **(
                        {"description": f"Consumer group `{service}`; acked after commit."}
                        if action == "receive"
                        else {}
                    ),
                }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "IDT event contract",
            "version": "1.0.0",
            "description": "CloudEvents 1.0 (JSON structured mode) on Redis Streams; "
            "stream key = `idt:` + event type. Generated by `python -m idt_contract.export`.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "redis": {"host": "localhost:6379", "protocol": "redis", "description": "Redis 7"}
        },
        "channels": dict(sorted(channels.items())),
        "operations": dict(sorted(operations.items())),
        "components": {
            "messages": dict(sorted(messages.items())),
            "schemas": dict(sorted(schemas.items())),
        },
    }


def rendered() -> dict[Path, str]:
    files = {
        OUT / "schemas" / f"{etype}.schema.json": json.dumps(s, indent=2, sort_keys=True) + "\n"
        for etype, s in json_schemas().items()
    }
    files[OUT / "asyncapi.json"] = json.dumps(asyncapi(), indent=2) + "\n"
    return files


def drift() -> list[str]:
    """Files whose committed text differs from what the code generates."""
    problems = []
    expected = rendered()
    for path, text in expected.items():
        if not path.exists():
            problems.append(f"missing: {path.relative_to(ROOT)}")
        elif path.read_text() != text:
            problems.append(f"out of date: {path.relative_to(ROOT)}")
    schema_dir = OUT / "schemas"
    if schema_dir.exists():
        for path in schema_dir.glob("*.json"):
            if path not in expected:
                problems.append(f"stale (no such event type): {path.relative_to(ROOT)}")
    return problems


def main(argv: list[str]) -> int:
    if "--check" in argv:
        problems = drift()
        for p in problems:
            print(p)
        if problems:
            print("run `python -m idt_contract.export` and commit the result")
        return 1 if problems else 0
    for path, text in rendered().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(rendered())} files under {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
