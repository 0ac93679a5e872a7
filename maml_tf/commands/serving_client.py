"""Ask a TF Serving server for recommendations from an exported MAML model.

  # top-k unknown items for users 0 and 1, over REST (port 8501):
  maml-tf serve-client --model_name=maml_office --user_ids=0,1
  # pair scores and attention weights, over gRPC (port 8500):
  maml-tf serve-client --protocol=grpc --signature=score \\
      --user_ids=0,1 --item_ids=5,7
  # print the request instead of sending it:
  maml-tf serve-client --user_ids=0,1 --dry_run

Signatures (see maml_tf/export.py): serving_default and retrieve take
`user_ids`; score takes `user_ids` and `item_ids` (same length). Ids are
int64 indices. By raw id (the strings of the data files): --user_keys (and
--item_keys for score) instead of --user_ids (--item_ids) calls the twin
signature, recommend_by_id, retrieve_by_id or score_by_id, which takes
`user_keys` (`item_keys`) as strings and also answers `item_keys`, the raw
item ids ("" in an empty slot):

  maml-tf serve-client --user_keys=A1B2,X9
  maml-tf serve-client --signature=score --user_keys=A1B2 --item_keys=B00X
  maml-tf serve-client --user_keys='["id, with comma"]' --dry_run

Keys are split at commas and stripped of spaces; a JSON list of strings
passes any raw id as it is. The reply is printed as one JSON object, output name -> nested lists,
whichever protocol carried it (a score of -Infinity with item -1 marks an
empty slot: the user had fewer than k unknown items).

REST: POST http://HOST:PORT/v1/models/NAME[/versions/N]:predict with
{"signature_name": ..., "inputs": {...}} (the columnar format; --format=row
sends {"instances": [{...}, ...]} instead). gRPC: a
tensorflow.serving.PredictRequest to PredictionService/Predict; this needs
the `tensorflow-serving-api` package (and with it TensorFlow), the REST path
needs only the standard library. The flags are parsed with argparse, not
absl, so that the client runs anywhere without the project.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

SIGNATURE_INPUTS = {
    "serving_default": ("user_ids",),
    "retrieve": ("user_ids",),
    "score": ("user_ids", "item_ids"),
    "recommend_by_id": ("user_keys",),
    "retrieve_by_id": ("user_keys",),
    "score_by_id": ("user_keys", "item_keys"),
}
# --user_keys (raw ids) picks the by-raw-id twin of --signature.
BY_ID = {"serving_default": "recommend_by_id", "retrieve": "retrieve_by_id",
         "score": "score_by_id"}
DEFAULT_PORTS = {"rest": 8501, "grpc": 8500}


class ClientError(Exception):
  """A bad flag or a failed request, shown as one line."""


def parse_ids(text, flag):
  """"0,1, 2" -> [0, 1, 2]; a clear error for anything else."""
  ids = []
  for part in (text or "").split(","):
    part = part.strip()
    if not part:
      continue
    try:
      ids.append(int(part))
    except ValueError:
      raise ClientError(f"`--{flag}` must be comma-separated integers. "
                        f"Received: {text!r}") from None
  return ids


def parse_keys(text, flag):
  """Raw ids: "A1B2, X9" -> ["A1B2", "X9"] (each stripped), or a JSON list
  of strings ('["a, b", " c"]') for ids holding commas or edge spaces."""
  text = text or ""
  if text.lstrip().startswith("["):
    try:
      keys = json.loads(text)
    except ValueError:
      keys = None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
      raise ClientError(f"`--{flag}` must be comma-separated raw ids or a JSON "
                        f"list of strings. Received: {text!r}")
    return keys
  return [part.strip() for part in text.split(",") if part.strip()]


def pick_signature(signature, by_key):
  """The signature to call: --user_keys picks the *_by_id twin."""
  if signature not in SIGNATURE_INPUTS:
    raise ClientError(f"`--signature` must be one of "
                      f"{', '.join(SIGNATURE_INPUTS)}. Received: {signature!r}")
  if by_key:
    return BY_ID.get(signature, signature)
  if signature not in BY_ID:
    raise ClientError(f"`--signature={signature}` takes raw ids: pass "
                      "--user_keys (and --item_keys). Received --user_ids")
  return signature


def build_inputs(signature, user_ids, item_ids=None):
  """The named inputs of a signature, checked as far as the client can.

  `user_ids` / `item_ids` are integer indices, or raw ids (str) for the
  *_by_id signatures.
  """
  if signature not in SIGNATURE_INPUTS:
    raise ClientError(f"`--signature` must be one of "
                      f"{', '.join(SIGNATURE_INPUTS)}. Received: {signature!r}")
  names = SIGNATURE_INPUTS[signature]
  kind = names[0].split("_")[1][:-1]  # "id" or "key"
  user_name, item_name = names[0], f"item_{kind}s"
  inputs = {user_name: list(user_ids)}
  if item_name in names:
    item_ids = list(item_ids or [])
    if len(item_ids) != len(inputs[user_name]):
      raise ClientError(
          f"`--{item_name}` must have one {kind} per user {kind} "
          f"({len(user_ids)}). Received: {len(item_ids)} {kind}s")
    inputs[item_name] = item_ids
  elif item_ids:
    score = "score" if kind == "id" else "score (score_by_id)"
    raise ClientError(f"`--{item_name}` is only for --signature={score}. "
                      f"Received it with --signature={signature}")
  return inputs


def inputs_from_args(args):
  """(signature, inputs) from the flags: --user_ids or --user_keys."""
  if args.user_ids is not None and args.user_keys is not None:
    raise ClientError("`--user_ids` (indices) and `--user_keys` (raw ids) "
                      "exclude each other. Received both")
  if args.user_ids is None and args.user_keys is None:
    raise ClientError("`--user_ids` (indices) or `--user_keys` (raw ids) is "
                      "required. Received neither")
  by_key = args.user_keys is not None
  if by_key and args.item_ids:
    raise ClientError("`--item_ids` (indices) goes with --user_ids, not "
                      f"--user_keys. Received: --item_ids={args.item_ids}")
  if not by_key and args.item_keys:
    raise ClientError("`--item_keys` (raw ids) goes with --user_keys, not "
                      f"--user_ids. Received: --item_keys={args.item_keys}")
  signature = pick_signature(args.signature, by_key)
  if by_key:
    return signature, build_inputs(signature, parse_keys(args.user_keys, "user_keys"),
                                   parse_keys(args.item_keys, "item_keys"))
  return signature, build_inputs(signature, parse_ids(args.user_ids, "user_ids"),
                                 parse_ids(args.item_ids, "item_ids"))


def rest_url(host, port, model_name, version=None):
  """http://HOST:PORT/v1/models/NAME[/versions/N]:predict."""
  path = f"/v1/models/{model_name}"
  if version is not None:
    path += f"/versions/{int(version)}"
  return f"http://{host}:{int(port)}{path}:predict"


def rest_body(signature, inputs, fmt="columnar"):
  """The JSON body: columnar {"inputs": {...}} or row {"instances": [...]}."""
  if fmt == "columnar":
    return {"signature_name": signature, "inputs": inputs}
  if fmt == "row":
    names = list(inputs)
    rows = [dict(zip(names, values)) for values in zip(*inputs.values())]
    return {"signature_name": signature, "instances": rows}
  raise ClientError(f"`--format` must be columnar or row. Received: {fmt!r}")


def parse_rest_reply(reply):
  """TF Serving's JSON reply -> {output name: nested lists}."""
  if "error" in reply:
    raise ClientError(f"server error: {reply['error']}")
  if "outputs" in reply:  # columnar request
    outputs = reply["outputs"]
    return outputs if isinstance(outputs, dict) else {"output": outputs}
  if "predictions" in reply:  # row request: one dict (or value) per instance
    rows = reply["predictions"]
    if rows and isinstance(rows[0], dict):
      return {name: [row[name] for row in rows] for name in rows[0]}
    return {"output": rows}
  raise ClientError(f"unexpected reply, neither outputs nor predictions: "
                    f"{json.dumps(reply)[:200]}")


def send_rest(url, body, timeout):
  """POSTs the body; returns the parsed outputs."""
  data = json.dumps(body).encode("utf-8")
  request = urllib.request.Request(
      url, data=data, method="POST", headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      reply = json.loads(response.read().decode("utf-8"))
  except urllib.error.HTTPError as e:
    text = e.read().decode("utf-8", "replace")
    try:
      message = json.loads(text).get("error", text)
    except ValueError:
      message = text
    raise ClientError(f"{url}: HTTP {e.code}: {message.strip()[:500]}") from None
  except (urllib.error.URLError, OSError) as e:
    raise ClientError(f"{url}: {getattr(e, 'reason', e)}") from None
  return parse_rest_reply(reply)


def _serving_apis():
  try:
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
    from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ClientError("gRPC needs the tensorflow-serving-api package: pip "
                      f"install 'tensorflow-serving-api==2.21.*' ({e})") from None
  return predict_pb2, prediction_service_pb2_grpc


def build_grpc_request(model_name, signature, inputs, version=None):
  """A tensorflow.serving.PredictRequest with int64 (ids) or string (raw
  ids, UTF-8) [n] input tensors."""
  predict_pb2, _ = _serving_apis()
  from tensorflow.core.framework import tensor_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow.core.framework import types_pb2  # pylint: disable=g-import-not-at-top

  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature
  if version is not None:
    request.model_spec.version.value = int(version)
  for name, values in inputs.items():
    if name.endswith("_keys"):
      tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
      tensor.string_val.extend(str(v).encode("utf-8") for v in values)
    else:
      tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64)
      tensor.int64_val.extend(int(v) for v in values)
    tensor.tensor_shape.dim.add(size=len(values))
    request.inputs[name].CopyFrom(tensor)
  return request


def tensor_to_list(tensor):
  """A TensorProto (as TF Serving sends it) -> nested lists."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tensorflow.core.framework import types_pb2  # pylint: disable=g-import-not-at-top

  if tensor.dtype == types_pb2.DT_STRING:  # raw ids (item_keys)
    shape = [d.size for d in tensor.tensor_shape.dim]
    values = np.array([v.decode("utf-8", "replace") for v in tensor.string_val],
                      dtype=object)
    return values.reshape(shape).tolist()
  kinds = {types_pb2.DT_FLOAT: (np.float32, "float_val"),
           types_pb2.DT_DOUBLE: (np.float64, "double_val"),
           types_pb2.DT_INT32: (np.int32, "int_val"),
           types_pb2.DT_INT64: (np.int64, "int64_val")}
  if tensor.dtype not in kinds:
    raise ClientError(f"unexpected output dtype {types_pb2.DataType.Name(tensor.dtype)}")
  dtype, field = kinds[tensor.dtype]
  shape = [d.size for d in tensor.tensor_shape.dim]
  if tensor.tensor_content:
    values = np.frombuffer(tensor.tensor_content, dtype=dtype)
  else:
    values = np.array(getattr(tensor, field), dtype=dtype)
    size = int(np.prod(shape))
    if 0 < values.size < size:  # TensorProto repeats the last value
      values = np.concatenate([values, np.full(size - values.size, values[-1])])
  return values.reshape(shape).tolist()


def send_grpc(target, request, timeout):
  """Calls PredictionService/Predict; returns the parsed outputs."""
  import grpc  # pylint: disable=g-import-not-at-top

  _, service = _serving_apis()
  with grpc.insecure_channel(target) as channel:
    stub = service.PredictionServiceStub(channel)
    try:
      reply = stub.Predict(request, timeout=timeout)
    except grpc.RpcError as e:
      raise ClientError(f"{target}: {e.code().name}: {e.details()}") from None
  return {name: tensor_to_list(t) for name, t in sorted(reply.outputs.items())}


def define_parser():
  parser = argparse.ArgumentParser(
      description="Query a TF Serving server that serves an exported MAML model.")
  parser.add_argument("--model_name", default="maml_office",
                      help="the served model's name (TF Serving's MODEL_NAME)")
  parser.add_argument("--signature", default="serving_default",
                      choices=sorted(SIGNATURE_INPUTS),
                      help="serving_default (recommend), retrieve or score; "
                      "with --user_keys their *_by_id twin")
  parser.add_argument("--user_ids", default=None,
                      help="comma-separated user indices (int64)")
  parser.add_argument("--item_ids", default="",
                      help="comma-separated item indices, one per user id (score)")
  parser.add_argument("--user_keys", default=None,
                      help="raw user ids, comma-separated (or a JSON list of "
                      "strings): calls recommend_by_id, retrieve_by_id or "
                      "score_by_id")
  parser.add_argument("--item_keys", default="",
                      help="raw item ids, one per user key (score)")
  parser.add_argument("--protocol", default="rest", choices=("rest", "grpc"))
  parser.add_argument("--host", default="localhost")
  parser.add_argument("--port", type=int, default=None,
                      help="default 8501 for rest, 8500 for grpc")
  parser.add_argument("--model_version", type=int, default=None,
                      help="a version number; default: the one the server serves")
  parser.add_argument("--format", default="columnar", choices=("columnar", "row"),
                      help="REST body: columnar `inputs` or row `instances`")
  parser.add_argument("--timeout", type=float, default=10.0, help="seconds")
  parser.add_argument("--dry_run", action="store_true",
                      help="print the request instead of sending it")
  return parser


def run(argv=None, out=sys.stdout):
  """The client; returns the outputs dict (None for a dry run)."""
  args = define_parser().parse_args(argv)
  signature, inputs = inputs_from_args(args)
  port = args.port or DEFAULT_PORTS[args.protocol]
  if args.protocol == "rest":
    url = rest_url(args.host, port, args.model_name, args.model_version)
    body = rest_body(signature, inputs, args.format)
    if args.dry_run:
      print(f"POST {url}", file=out)
      print(json.dumps(body, indent=2), file=out)
      return None
    outputs = send_rest(url, body, args.timeout)
  else:
    target = f"{args.host}:{port}"
    request = build_grpc_request(args.model_name, signature, inputs,
                                 args.model_version)
    if args.dry_run:
      print(f"gRPC {target} tensorflow.serving.PredictionService/Predict", file=out)
      print(str(request), end="", file=out)  # protobuf text format
      return None
    outputs = send_grpc(target, request, args.timeout)
  print(json.dumps(outputs), file=out)
  return outputs


def main(argv=None):
  try:
    run(argv)
  except ClientError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


def entry(argv=None):
  """`maml-tf serve-client ...`: exits with main's status."""
  sys.exit(main(argv))
