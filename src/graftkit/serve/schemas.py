"""Request and response bodies of the HTTP API (pydantic; they are also its OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

MAX_ITEMS = 64  # inputs per request; more is a 400 (send several requests)


def _predict_json() -> type[BaseModel]:
    """One optional list field per registered modality (``images``, ``texts``, ...)."""
    from ..modalities import MODALITIES

    fields: dict[str, Any] = {}
    for name in MODALITIES.names():
        m = MODALITIES.get(name)
        fields[m.json_field] = (list[str] | None, Field(None, max_length=MAX_ITEMS,
                                                        description=m.json_help))
    return create_model("PredictJSON", __config__=ConfigDict(extra="forbid"),
                        __doc__="A JSON prediction request: base64-encoded files (a ``data:`` "
                        "URI prefix is allowed) or texts, in the field of the model's modality "
                        "(``images`` for an image model, ``texts`` for a text model).",
                        **fields)


PredictJSON = _predict_json()


class TopClass(BaseModel):
    label: str
    prob: float = Field(description="calibrated probability")
    threshold: float | None = Field(None, description="multi-label: the label's decision "
                                    "threshold (present when prob >= threshold)")


class Prediction(BaseModel):
    input: str = Field(description="the uploaded file's name, images[i], or the text")
    label: str | None = Field(None, description="the decided class (classification)")
    prob: float | None = Field(None, description="its calibrated probability")
    top: list[TopClass] | None = Field(None, description="the top-k classes, most probable "
                                       "first")
    value: float | None = Field(None, description="the predicted value (regression)")
    labels: list[str] | None = Field(None, description="multi-label: every label at or above "
                                     "its threshold, most probable first")
    confidence: float | None = Field(None, description="multi-label: the mean calibrated "
                                     "probability of the decisions taken for every label")


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction]


class ExplainResponse(BaseModel):
    input: str
    label: str
    prob: float
    top: list[TopClass]
    method: str
    overlay: str = Field(description="PNG of the Grad-CAM heatmap over the image as the model "
                         "saw it, as a data: URI (base64)")


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable kind, e.g. bad_image, body_too_large")
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str = Field(description="ready | loading | failed")
    error: str | None = None


class Info(BaseModel):
    source: str = Field(description="run | onnx-bundle")
    path: str
    model: str
    task: str
    modality: str
    input: dict[str, Any] = Field(description="what the web page asks for: files (bool), accept "
                                  "(a file chooser's MIME pattern) and noun")
    classes: list[str]
    explain: bool
    auth: bool
    topk: int
    max_batch: int
    max_body_bytes: int
    max_pixels: int = Field(description="pixels of one image (413 over it)")
    max_request_pixels: int = Field(description="pixels of all images of one request (413)")
    max_decode_pixels: int = Field(description="pixels decoded at once across the server; "
                                   "requests beyond it wait, or get 503 when too many wait")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer with."""
    words = {400: "client mistake (bad input)", 401: "missing or wrong bearer token",
             413: "body or image too large", 415: "unsupported Content-Type",
             501: "not available for this model", 503: "not ready or overloaded",
             504: "timed out"}
    return {c: {"model": ErrorBody, "description": words[c]} for c in codes}
