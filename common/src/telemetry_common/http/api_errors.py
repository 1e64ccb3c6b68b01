"""One error body for every refusal: which field is wrong and why."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.applications import Starlette

from telemetry_common.domain.reading import FieldError


class FieldErrorOut(BaseModel):
    field: str = Field(examples=["temperature_c"])
    reason: str = Field(examples=["must be a finite number"])


class ErrorOut(BaseModel):
    """Every refusal's body, in both APIs (built by :func:`error_body`)."""

    detail: str = Field(examples=["temperature_c: must be a finite number"])
    errors: list[FieldErrorOut]


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        field: str,
        reason: str,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ):
        self.status = status
        self.errors = errors or [FieldError(field, reason)]
        self.headers = headers
        super().__init__(reason)


def error_body(errors: list[FieldError]) -> dict[str, object]:
    return {
        "detail": "; ".join(f"{e.field}: {e.reason}" for e in errors),
        "errors": [e.as_dict() for e in errors],
    }


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.errors), status_code=exc.status, headers=exc.headers)


async def api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def validation_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        FieldError(".".join(str(p) for p in err["loc"] if p not in ("body", "query")), err["msg"])
        for err in exc.errors()
    ]
    return JSONResponse(error_body(errors), status_code=422)


def install_error_handlers(app: Starlette) -> None:
    """Every refusal, ours or FastAPI's own validation, answers with the same body."""
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
