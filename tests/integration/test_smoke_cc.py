from __future__ import annotations

from datetime import UTC, datetime

from fastapi.testclient import TestClient

from idt_runtime.clock import FixedClock
from services.contact_centre.app import ContactCentreSettings, create_app
from tests.conftest import wait_for
from tests.helpers import TEST_KEY, register_offices


def test_register_claim_roundtrip(redis_url, var_dir, r):
    register_offices(r)
    settings = ContactCentreSettings(
        redis_url=redis_url,
        var_dir=var_dir,
        environment="test",
        customer_ref_key=TEST_KEY,
        reclaim_interval_s=0.2,
    )
    app = create_app(settings, FixedClock(datetime(2007, 6, 4, 9, tzinfo=UTC)))
    with TestClient(app) as client:
        wait_for(
            lambda: (
                client.post(
                    "/v1/claims",
                    json={
                        "nino": "JT 12 34 56 C",
                        "benefit": "IB",
                        "claim_start_date": "2007-06-01",
                        "contact_centre_id": "CC01",
                        "jobcentre_id": "JC0101",
                    },
                ).status_code
                == 201
            )
        )
        assert r.xlen("idt:claim-registered") == 1
        print(client.get("/health").json())
        print(client.get("/metrics").text[:500])
