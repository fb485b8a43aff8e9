"""Request and response bodies of the HTTP service (pydantic v2).

Request models are built per app by :func:`request_models`, because their size
limits (``k``, the number of items, the number of ratings) are arguments of
:func:`cmcrec.service.app.create_app`; the OpenAPI schema then states the limits
the running server enforces. Every request model forbids unknown fields, so a
misspelt field (``"top_k"``) is an error, not a silently ignored default.

User and item ids are strings on the wire; integers are accepted for
convenience (MovieLens ids look like numbers) and turned into their decimal
string, the form the model's vocabularies hold. Booleans and floats are refused
rather than coerced (``true`` is not user ``"True"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema


def _to_id(value: Any) -> str:
    # bool is a subclass of int: refuse it explicitly before the int branch.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"an id must be a string or an integer, got {type(value).__name__} {value!r}")
    return str(value)


Id = Annotated[
    str,
    PlainValidator(_to_id),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}], "description": "A user or item id."}),
]
"""A user or item id: a JSON string or integer, normalised to ``str``."""

Rating = Annotated[float, Field(strict=True, allow_inf_nan=False, description="A rating on the model's scale.")]
"""A finite JSON number (strings such as ``"4"`` are refused)."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class RequestModels:
    """The request body classes of one app, with its limits baked into their fields."""

    predict: type[BaseModel]
    recommend: type[BaseModel]
    new_user: type[BaseModel]


def request_models(max_k: int, max_items: int, max_ratings: int) -> RequestModels:
    """Request body models enforcing these limits.

    Args:
        max_k: largest ``k`` a recommendation request may ask for.
        max_items: most items one ``/predict`` request may score.
        max_ratings: most ratings one ``/recommend/new-user`` request may give.
    """
    for name, value in (("max_k", max_k), ("max_items", max_items), ("max_ratings", max_ratings)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    K = Annotated[int, Field(strict=True, ge=1, le=max_k, description=f"Number of items to return (1..{max_k}).")]

    class PredictRequest(_Request):
        """Predicted ratings of one training user for some items."""

        user: Id = Field(description="A user id from the training data.", examples=["42"])
        items: list[Id] = Field(
            min_length=1,
            max_length=max_items,
            description=f"Item ids to score (1..{max_items}).",
            examples=[["1", "2", "3"]],
        )

    class RecommendRequest(_Request):
        """Top-k items for a training user."""

        user: Id = Field(description="A user id from the training data.", examples=["42"])
        k: K = 10
        exclude_seen: bool = Field(True, strict=True, description="Leave out items the user rated in training.")

    class NewUserRequest(_Request):
        """Top-k items for a user absent from training, from a few of their ratings."""

        ratings: dict[str, Rating] = Field(
            min_length=1,
            max_length=max_ratings,
            description=f"Item id → rating on the model's scale (1..{max_ratings} pairs). "
            "The rated items are never recommended back.",
            examples=[{"1": 5, "2": 3.0}],
        )
        k: K = 10

    return RequestModels(predict=PredictRequest, recommend=RecommendRequest, new_user=NewUserRequest)


# -- responses -------------------------------------------------------------------------------------------


class Health(BaseModel):
    """Liveness and what is being served."""

    status: str = Field(description='Always "ok" when the server answers.')
    model: str = Field(description="Registry name of the served model (mf, igmc, mccl, ...).")
    num_users: int = Field(description="Users in the model's vocabulary.")
    num_items: int = Field(description="Items in the model's vocabulary.")
    cmcrec_version: str = Field(description="Version of the cmcrec package serving the model.")


class ItemInfo(BaseModel):
    """One catalogue item."""

    item: str = Field(description="The item id.")
    title: str | None = Field(None, description="Title, when the dataset has titles.")
    genres: list[str] | None = Field(None, description="Genres, when the dataset has them.")
    num_ratings: int = Field(description="Training ratings of this item.")


class Prediction(BaseModel):
    item: str = Field(description="The item id.")
    score: float = Field(description="Predicted rating on the model's scale.")


class PredictResponse(BaseModel):
    user: str = Field(description="The user id, as the model knows it.")
    predictions: list[Prediction] = Field(description="One prediction per requested item, in request order.")


class RecommendedItem(BaseModel):
    item: str = Field(description="The item id.")
    score: float = Field(description="Predicted rating on the model's scale.")
    title: str | None = Field(None, description="Title, when the dataset has titles.")
    genres: list[str] | None = Field(None, description="Genres, when the dataset has them.")


class RecommendResponse(BaseModel):
    user: str = Field(description="The user id, as the model knows it.")
    items: list[RecommendedItem] = Field(description="At most k items, best first (scores descending).")


class NewUserResponse(BaseModel):
    items: list[RecommendedItem] = Field(
        description="At most k items, best first (scores descending); never one of the rated items."
    )


class ErrorResponse(BaseModel):
    """Every 4xx (and the unexpected 5xx) answer."""

    error: str = Field(description="A short machine-readable kind: not_found, invalid_request, bad_json, ...")
    message: str = Field(description="What was wrong, naming the field or id.")
    errors: list[dict[str, Any]] | None = Field(
        None, description="For validation errors: one entry per problem, with its location and message."
    )
