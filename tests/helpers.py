"""Small builders shared by tests."""

from __future__ import annotations

import redis

from idt_contract import Envelope, entry_fields, stream_for
from idt_contract.events import OfficeKind, OfficeRegistered, OfficeRegisteredData, make_event

from .conftest import t

#: A pseudonymisation key for tests (the development placeholder is refused outside
#: IDT_ENVIRONMENT=development).
TEST_KEY = "test-only-customer-ref-key-0123456789abcdef"

OFFICES = [
    ("CC01", OfficeKind.CONTACT_CENTRE, "Bolton Contact Centre", "Contact Centres", "North West"),
    ("BDC01", OfficeKind.BDC, "Wigan Benefit Delivery Centre", "BDCs", "North West"),
    ("JC0101", OfficeKind.JOBCENTRE, "Bolton Jobcentre", "Greater Manchester East", "North West"),
    ("JC0102", OfficeKind.JOBCENTRE, "Bury Jobcentre", "Greater Manchester East", "North West"),
]


def xadd(r: redis.Redis, event: Envelope, stream: str | None = None) -> bytes:
    return r.xadd(stream or stream_for(event.type), entry_fields(event))  # type: ignore[arg-type]


def register_offices(r: redis.Redis) -> None:
    for oid, kind, name, district, region in OFFICES:
        xadd(
            r,
            make_event(
                OfficeRegistered,
                source="/registry",
                time=t("2007-01-01"),
                data=OfficeRegisteredData(
                    office_id=oid, kind=kind, name=name, district=district, region=region
                ),
                id=f"office-{oid}",
            ),
        )
