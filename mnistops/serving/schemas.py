"""Pydantic models of the JSON bodies: they document the API (OpenAPI) and are NOT used to parse
requests on the hot path (``inputs.py`` validates by hand, faster and with per-field messages)."""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, Field

Image = Union[List[float], List[List[float]]]


class Error(BaseModel):
    error: str = Field(description="what is wrong, naming the field at fault")
    field: Optional[str] = Field(None, description="the request field at fault, when there is one")
    request_id: Optional[str] = None


class Prediction(BaseModel):
    digit: int = Field(ge=0, le=9)
    probabilities: List[float] = Field(min_length=10, max_length=10, description="softmax over the digits 0-9")


class ScoreRequest(BaseModel):
    """Azure ML score.py style."""

    data: Union[List[Image], Image] = Field(
        description="images: rows of 784 pixels or 28x28 arrays (or one of them); integers 0-255 or floats 0-1",
        examples=[[[0] * 784]])


class PredictionResponse(BaseModel):
    predictions: List[Prediction]
    model: str = Field(description="registered model name")
    version: str = Field(description="registered model version")
    deployment: str = Field(description="the deployment that answered (blue, green, ...)")
    request_id: str


class DataframeSplit(BaseModel):
    columns: Optional[List[str]] = Field(None, description="784 pixel columns, or 1 image column")
    index: Optional[List[Any]] = None
    data: List[List[Any]]


class InvocationsRequest(BaseModel):
    """MLflow scoring protocol (exactly one key), plus Azure ML's MLflow ``input_data``."""

    inputs: Optional[Union[List[Any], Dict[str, Any]]] = Field(None, description="tensor input (or {name: tensor})")
    instances: Optional[List[Any]] = Field(None, description="TF-serving style list of images")
    dataframe_split: Optional[DataframeSplit] = None
    dataframe_records: Optional[List[Dict[str, Any]]] = None
    input_data: Optional[Union[List[Any], DataframeSplit]] = Field(
        None, description="Azure ML MLflow deployments: a list of images or {columns, index, data}")


class V2Tensor(BaseModel):
    name: str
    shape: List[int]
    datatype: Literal["UINT8", "INT8", "INT16", "INT32", "INT64", "UINT16", "UINT32", "UINT64", "FP16", "FP32",
                      "FP64"]
    data: List[Any] = Field(description="flat or nested values, row-major")


class V2InferRequest(BaseModel):
    id: Optional[str] = None
    inputs: List[V2Tensor] = Field(min_length=1, max_length=1, description="one tensor: images [N,28,28] or [N,784]")
    parameters: Optional[Dict[str, Any]] = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: List[V2Tensor] = Field(description="'probabilities' FP32 [N,10] and 'digit' INT64 [N]")


class V2TensorMeta(BaseModel):
    name: str
    datatype: str
    shape: List[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: List[str]
    platform: str
    inputs: List[V2TensorMeta]
    outputs: List[V2TensorMeta]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    ready: bool
    reasons: List[str] = []


class FeedbackRequest(BaseModel):
    request_id: str = Field(min_length=1, max_length=128, description="x-request-id of the scored request")
    label: int = Field(ge=0, le=9, description="the true digit")


class FeedbackAccepted(BaseModel):
    status: Literal["accepted"]
    request_id: str


class PredictUpload(BaseModel):
    file: bytes = Field(description="PNG or JPEG picture of one digit, any size, colour or polarity",
                        json_schema_extra={"format": "binary"})


class DeploymentInfo(BaseModel):
    model_name: str
    version: str
    model_uri: str
    path: str
    loaded_at: str


class DeploymentStatus(DeploymentInfo):
    loaded: bool
    healthy: bool
    error: Optional[str] = None
    queue_depth: int = 0


class Snapshot(BaseModel):
    deployments: Dict[str, DeploymentInfo]
    traffic: Dict[str, int]
    mirror_traffic: Dict[str, int]


class AdminState(BaseModel):
    name: str
    env: str
    deployments: Dict[str, DeploymentStatus]
    traffic: Dict[str, int]
    mirror_traffic: Dict[str, int]
    previous: Optional[Snapshot] = None


class LoadRequest(BaseModel):
    path: str = Field(description="absolute path of the MLflow model dir (holds artifacts/model.onnx)")
    model_name: str = ""
    version: str = ""
    model_uri: str = ""


class TrafficRequest(BaseModel):
    traffic: Dict[str, int] = Field(description="deployment -> percent (ints 0..100, summing to 100)")
    mirror_traffic: Optional[Dict[str, int]] = Field(
        None, description="deployment -> percent of requests also sent there (answer discarded); "
                          "only to deployments with 0% live traffic; omitted: unchanged")


REQUEST_MODELS = [ScoreRequest, InvocationsRequest, V2InferRequest, FeedbackRequest, PredictUpload, LoadRequest,
                  TrafficRequest]
