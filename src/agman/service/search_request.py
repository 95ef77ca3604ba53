"""What ``POST /search`` accepts, read and checked in one place: a multipart form (the only way to
upload an image), a URL-encoded form, or a JSON object with the same fields less the upload.  Any
other content type is answered 415 naming these; a field of the wrong type 422, a wrong value 400."""
from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError
from starlette.datastructures import UploadFile

from agman.retrieval.filters import Filter
from agman.retrieval.query import DEFAULT_K, AttributeWeights
from agman.service.json_body import parse_json
from agman.service.state import ServiceState

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
ACCEPTED = "multipart/form-data (needed to upload an image), application/x-www-form-urlencoded or application/json"
MAX_FORM_FIELDS = 200  # attributes may repeat, one field each; an index has far fewer attributes


class SearchFields(BaseModel):
    """The fields of a search besides the upload: a JSON body is exactly this object."""

    model_config = ConfigDict(extra="forbid")

    attributes: list[StrictStr] | StrictStr | dict[StrictStr, float] = Field(
        description="'name[:weight]' entries (a list, or comma-separated in one string) or {name: weight}; "
        "weight defaults to 1")
    item: StrictStr | None = Field(None, description="id of a catalog item to use as the query")
    query: StrictStr | None = Field(None, description="id of an earlier uploaded query (from a previous answer)")
    k: StrictInt | StrictStr | None = Field(None, description="number of results (1..max_k, default 10)")
    exclude_self: StrictBool | StrictStr | None = Field(None, description="leave the query item itself out")
    annotated_only: StrictBool | StrictStr | None = Field(
        None, description="rank only items annotated with the attributes")
    filter: StrictStr | None = Field(
        None, description='only items matching this expression, e.g. category == "dress" and price < 50')


@dataclass
class SearchForm:
    """A checked search: exactly one query source, parsed attributes, k and flags."""

    weights: AttributeWeights
    k: int
    exclude_self: bool
    annotated_only: bool
    image: UploadFile | None = None
    item: str | None = None
    query: str | None = None
    filter: Filter | None = None


def request_body_schema() -> dict:
    """The OpenAPI ``requestBody`` of ``POST /search``: the form (with the upload) and the JSON object."""
    fields = SearchFields.model_json_schema()
    form = {**fields, "title": "SearchForm", "properties": {
        "image": {"type": "string", "format": "binary", "description": "query image (JPEG, PNG, ...)"},
        **fields["properties"],
        "attributes": {"type": "array", "items": {"type": "string"},
                       "description": "'name[:weight]' entries, repeated or comma-separated; weight defaults to 1"},
    }}
    form.pop("additionalProperties", None)
    return {"required": True, "content": {
        "multipart/form-data": {"schema": form},
        "application/json": {"schema": fields},
    }}


def flag(raw: bool | str | None, name: str) -> bool:
    if isinstance(raw, bool):
        return raw
    value = (raw or "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise HTTPException(400, f"{name} must be true or false, got {raw!r}")


def k_value(raw: int | str | None, max_k: int) -> int:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return min(DEFAULT_K, max_k)
    if isinstance(raw, str):
        try:
            raw = int(raw.strip())
        except ValueError:
            raise HTTPException(400, f"k must be an integer, got {raw!r}") from None
    if not 1 <= raw <= max_k:
        raise HTTPException(400, f"k must be between 1 and {max_k}, got {raw}")
    return raw


def check(state: ServiceState, fields: SearchFields, image: UploadFile | None = None) -> SearchForm:
    """The fields checked: 400 naming the one that is wrong.  ``k`` and the flags may come as text
    (a form's) and answer 400 with these messages rather than a validation error's 422."""
    given = [name for name, v in (("image", image), ("item", fields.item), ("query", fields.query))
             if v not in (None, "")]
    if len(given) != 1:
        raise HTTPException(400, f"give exactly one of image, item or query (got {', '.join(given) or 'none'})")
    text = fields.filter
    return SearchForm(
        k=k_value(fields.k, state.limits.max_k),
        exclude_self=flag(fields.exclude_self, "exclude_self"),
        annotated_only=flag(fields.annotated_only, "annotated_only"),
        weights=state.retriever.parse_attributes(fields.attributes),  # the one check of the attributes (400)
        image=image,
        item=fields.item or None,
        query=fields.query or None,
        filter=state.retriever.compile_filter(text) if text and text.strip() else None,  # 400 naming the position
    )


def _validated(data, where: str) -> SearchFields:
    """``data`` as :class:`SearchFields`, or a 422 naming each wrong field (``k: ...``)."""
    try:
        return SearchFields.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": (where, *e["loc"])} for e in exc.errors()]) from None


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json(request: Request, state: ServiceState) -> SearchForm:
    data = parse_json(await request.body())  # bounded depth and numbers, no lone surrogates (400)
    if not isinstance(data, dict):
        raise HTTPException(400, f"the JSON body must be an object of search fields, got {type(data).__name__}")
    if "image" in data:
        raise HTTPException(400, "a JSON body cannot carry an image: upload it as multipart/form-data (field "
                                 "'image'), or give item or query")
    return check(state, _validated(data, "body"))


def read_form(form, state: ServiceState) -> SearchForm:
    """A parsed form (multipart or URL-encoded): repeated ``attributes`` combined, the upload in ``image``."""
    image = form.get("image")
    if image is not None and not isinstance(image, UploadFile):
        if image != "":
            raise HTTPException(400, "image must be a file upload (multipart/form-data), not a text field")
        image = None
    data = {key: form.get(key) for key in form.keys() if key not in ("image", "attributes")}
    if "attributes" in form:
        data["attributes"] = form.getlist("attributes")
    return check(state, _validated(data, "body"), image)


def unsupported(request: Request) -> HTTPException:
    given = media_type(request) or "no content type"
    return HTTPException(415, f"POST /search takes {ACCEPTED}; got {given}")


def is_json(kind: str) -> bool:
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))
