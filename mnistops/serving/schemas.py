"""Pydantic models of the JSON bodies, for the OpenAPI description (``/docs``, ``/openapi.json``).

The routes decode bodies with ``protocol.py`` (one decoder shared with score.py and the pyfunc,
with per-field messages); these models describe the same shapes to clients and to fuzzers."""

from __future__ import annotations

from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mnistops.serving import traffic_split
from mnistops.serving.protocol import INVOCATION_KEYS

# what ``protocol.to_batch`` accepts: 784-long rows or 28x28 grids of pixels, integers 0-255 or floats 0-1
# (floats above 1 are read on the 0-255 scale)
Pixel = Annotated[float, Field(ge=0, le=255)]
ImageRow = Annotated[List[Pixel], Field(min_length=784, max_length=784, description="784 pixels, row-major")]
ImageGrid = Annotated[List[Annotated[List[Pixel], Field(min_length=28, max_length=28)]],
                      Field(min_length=28, max_length=28, description="28 rows of 28 pixels")]
Image = Union[ImageRow, ImageGrid]
Images = Union[Annotated[List[ImageRow], Field(min_length=1)], Annotated[List[ImageGrid], Field(min_length=1)], Image]


class Error(BaseModel):
    error: str = Field(description="what is wrong, naming the field at fault")
    field: Optional[str] = Field(None, description="the request field at fault, when there is one")
    request_id: Optional[str] = None


class Prediction(BaseModel):
    digit: int = Field(ge=0, le=9)
    probabilities: List[float] = Field(min_length=10, max_length=10,
                                       description="calibrated probabilities of the digits 0-9 (softmax of the "
                                                   "logits divided by the temperature fitted at training)")
    ood_score: float = Field(description="how unlike the training digits the image is (higher = less like a digit; "
                                         "the model's ood_method, e.g. the energy score)")
    ood: bool = Field(description="true: this does not look like a digit (ood_score above the model's threshold, "
                                  "chosen so that <= 1 % of MNIST digits are flagged); always false for a model "
                                  "registered before calibration")


class ScoreRequest(BaseModel):
    """Azure ML score.py style."""

    data: Images = Field(
        description="images: a non-empty list of rows of 784 pixels or of 28x28 arrays (or one of them); "
                    "integers 0-255 or floats 0-1",
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
    data: List[List[Any]] = Field(min_length=1, description="rows of 784 pixels, or rows of 1 cell holding an image")


class InvocationsRequest(BaseModel):
    """MLflow scoring protocol (exactly one key), plus Azure ML's MLflow ``input_data``."""

    # exactly one of the keys; the fields carry no `null` (a key that is present must hold its value)
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": [k]} for k in INVOCATION_KEYS]})

    inputs: Union[Images, Dict[str, Images]] = Field(None, description="tensor input (or {name: tensor})")
    instances: Union[Images, List[Annotated[Dict[str, Image], Field(min_length=1, max_length=1)]]] = Field(
        None, description="TF-serving style list of images (or of {name: image} objects)")
    dataframe_split: DataframeSplit = None
    dataframe_records: Annotated[List[Dict[str, Any]], Field(min_length=1)] = Field(
        None, description="records of 784 pixel fields, or of 1 image field, all with the same fields")
    input_data: Union[Images, DataframeSplit, Dict[str, Images]] = Field(
        None, description="Azure ML MLflow deployments: a list of images or {columns, index, data}")


class V2Tensor(BaseModel):
    name: str
    shape: List[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    datatype: Literal["UINT8", "INT8", "INT16", "INT32", "INT64", "UINT16", "UINT32", "UINT64", "FP16", "FP32",
                      "FP64"]
    data: List[Any] = Field(description="flat or nested values, row-major")


class V2InferRequest(BaseModel):
    id: Optional[str] = None
    inputs: List[V2Tensor] = Field(min_length=1, max_length=1, description="one tensor: images [N,28,28] or [N,784]")
    parameters: Optional[Dict[str, Any]] = None


class V2OutputTensor(V2Tensor):
    datatype: Literal["INT64", "FP32", "BOOL"]


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: List[V2OutputTensor] = Field(description="'probabilities' FP32 [N,10] (calibrated), 'digit' INT64 [N], "
                                                       "'ood_score' FP32 [N] and 'ood' BOOL [N]")


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
    label: Literal[0, 1, 2, 3, 4, 5, 6, 7, 8, 9] = Field(description="the true digit (an integer 0-9)")


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
    serving_since: Optional[str] = Field(None, description="when the running server loaded it (loaded_at: when it was deployed)")


class Snapshot(BaseModel):
    deployments: Dict[str, DeploymentInfo]
    traffic: Dict[str, int]
    mirror_traffic: Dict[str, int]


class WorkerStatus(BaseModel):
    pid: int
    generation: int = Field(description="the committed state this worker serves")
    loaded: Dict[str, bool] = Field(description="deployment -> loaded in this worker")


class AdminState(BaseModel):
    name: str
    env: str
    generation: int = Field(description="committed changes so far (state.json)")
    deployments: Dict[str, DeploymentStatus] = Field(description="loaded/healthy: in every live worker; "
                                                                 "queue_depth: summed over them")
    traffic: Dict[str, int]
    mirror_traffic: Dict[str, int]
    previous: Optional[Snapshot] = None
    workers: List[WorkerStatus] = Field(description="the live worker processes")


class LoadRequest(BaseModel):
    path: str = Field(description="absolute path of the MLflow model dir (holds artifacts/model.onnx)")
    model_name: str = ""
    version: str = ""
    model_uri: str = ""


Percent = Annotated[int, Field(ge=0, le=100)]


class TrafficRequest(BaseModel):
    # validated by traffic_split, the rule of the admin route and the deploy stage (same verdict, same words)
    traffic: Dict[str, Percent] = Field(description="deployment -> percent (ints 0..100, summing to 100)")
    mirror_traffic: Optional[Dict[str, Percent]] = Field(
        None, description="deployment -> percent of requests also sent there (answer discarded); "
                          "only to deployments with 0% live traffic; omitted: unchanged")

    @model_validator(mode="before")
    @classmethod
    def _one_rule(cls, body: Any) -> Any:
        if isinstance(body, dict) and "traffic" in body:
            traffic_split.split(body["traffic"], body.get("mirror_traffic"))  # SplitError is a ValueError
        return body


REQUEST_MODELS = [ScoreRequest, InvocationsRequest, V2InferRequest, FeedbackRequest, PredictUpload, LoadRequest,
                  TrafficRequest]
