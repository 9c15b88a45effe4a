"""The REST API against its own OpenAPI document (schemathesis): every documented route,
with generated inputs, answers as the document says and never with a server error."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis

from tests.conftest import TOKEN

pytestmark = pytest.mark.ray


@pytest.fixture
def api_schema(plane: Any) -> Any:
    return schemathesis.openapi.from_url(f"{plane.base_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_the_rest_api_keeps_to_its_openapi_document(case: Any) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"})
