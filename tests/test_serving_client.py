"""scripts/serving_client.py: the requests it builds and the replies it reads.

No TF Serving here: the dry runs are checked as text, and the real REST and
gRPC paths talk to tiny servers on 127.0.0.1 that record the request and
answer a canned reply in TF Serving's format.
"""

import importlib.util
import io
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "serving_client.py")


def _load_client():
  spec = importlib.util.spec_from_file_location("serving_client", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


client = _load_client()


def _run(argv):
  out = io.StringIO()
  result = client.run(argv, out=out)
  return result, out.getvalue()


# ------------------------------------------------------------- dry runs


def test_rest_dry_run_prints_the_columnar_request():
  result, text = _run(["--model_name=maml_office", "--user_ids=0, 1", "--dry_run"])
  assert result is None
  first, body = text.split("\n", 1)
  assert first == "POST http://localhost:8501/v1/models/maml_office:predict"
  assert json.loads(body) == {"signature_name": "serving_default",
                              "inputs": {"user_ids": [0, 1]}}


def test_rest_dry_run_row_format_with_version_and_score():
  _, text = _run(["--model_name=m", "--signature=score", "--user_ids=3,4",
                  "--item_ids=7,8", "--format=row", "--model_version=2",
                  "--host=10.0.0.5", "--port=9000", "--dry_run"])
  first, body = text.split("\n", 1)
  assert first == "POST http://10.0.0.5:9000/v1/models/m/versions/2:predict"
  assert json.loads(body) == {
      "signature_name": "score",
      "instances": [{"user_ids": 3, "item_ids": 7}, {"user_ids": 4, "item_ids": 8}]}


def test_rest_path_needs_no_tensorflow():
  code = ("import importlib.util, io, sys\n"
          f"spec = importlib.util.spec_from_file_location('c', {SCRIPT!r})\n"
          "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
          "m.run(['--user_ids=1', '--dry_run'], out=io.StringIO())\n"
          "print('tensorflow' in sys.modules)\n")
  proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "False"


def test_grpc_dry_run_prints_the_predict_request():
  pytest.importorskip("tensorflow_serving.apis.predict_pb2")
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
  _, text = _run(["--protocol=grpc", "--model_name=maml_office",
                  "--signature=retrieve", "--user_ids=5,6,7", "--model_version=3",
                  "--dry_run"])
  first, body = text.split("\n", 1)
  assert first == "gRPC localhost:8500 tensorflow.serving.PredictionService/Predict"
  request = text_format.Parse(body, predict_pb2.PredictRequest())
  assert request.model_spec.name == "maml_office"
  assert request.model_spec.signature_name == "retrieve"
  assert request.model_spec.version.value == 3
  tensor = request.inputs["user_ids"]
  assert tensor.dtype == 9  # DT_INT64
  assert [d.size for d in tensor.tensor_shape.dim] == [3]
  assert list(tensor.int64_val) == [5, 6, 7]


def test_rest_dry_run_by_raw_id_picks_the_by_id_signatures():
  _, text = _run(["--user_keys=A1B2, X9", "--dry_run"])
  assert json.loads(text.split("\n", 1)[1]) == {
      "signature_name": "recommend_by_id", "inputs": {"user_keys": ["A1B2", "X9"]}}
  _, text = _run(["--signature=retrieve", "--user_keys=u-ñ", "--dry_run"])
  assert json.loads(text.split("\n", 1)[1]) == {
      "signature_name": "retrieve_by_id", "inputs": {"user_keys": ["u-ñ"]}}
  # Explicitly named, and score in the row format; a JSON list keeps commas.
  _, text = _run(["--signature=score_by_id", '--user_keys=["a, b", " c"]',
                  "--item_keys=sku/1,sku/2", "--format=row", "--dry_run"])
  assert json.loads(text.split("\n", 1)[1]) == {
      "signature_name": "score_by_id",
      "instances": [{"user_keys": "a, b", "item_keys": "sku/1"},
                    {"user_keys": " c", "item_keys": "sku/2"}]}


def test_grpc_dry_run_by_raw_id_sends_strings():
  pytest.importorskip("tensorflow_serving.apis.predict_pb2")
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
  _, text = _run(["--protocol=grpc", "--signature=score", "--user_keys=u-ñ,u-b",
                  "--item_keys=sku/1,sku/2", "--dry_run"])
  request = text_format.Parse(text.split("\n", 1)[1], predict_pb2.PredictRequest())
  assert request.model_spec.signature_name == "score_by_id"
  assert set(request.inputs) == {"user_keys", "item_keys"}
  tensor = request.inputs["user_keys"]
  assert tensor.dtype == 7  # DT_STRING
  assert [d.size for d in tensor.tensor_shape.dim] == [2]
  assert list(tensor.string_val) == ["u-ñ".encode(), b"u-b"]
  assert list(request.inputs["item_keys"].string_val) == [b"sku/1", b"sku/2"]


@pytest.mark.parametrize("argv, message", [
    ([], "`--user_ids` (indices) or `--user_keys` (raw ids) is required. "
     "Received neither"),
    (["--user_ids=1", "--user_keys=a"],
     "`--user_ids` (indices) and `--user_keys` (raw ids) exclude each other. "
     "Received both"),
    (["--user_keys=a", "--item_ids=1"],
     "`--item_ids` (indices) goes with --user_ids, not --user_keys. "
     "Received: --item_ids=1"),
    (["--user_ids=1", "--item_keys=a"],
     "`--item_keys` (raw ids) goes with --user_keys, not --user_ids. "
     "Received: --item_keys=a"),
    (["--user_ids=1", "--signature=recommend_by_id"],
     "`--signature=recommend_by_id` takes raw ids: pass --user_keys (and "
     "--item_keys). Received --user_ids"),
    (["--signature=score", "--user_keys=a,b", "--item_keys=c"],
     "`--item_keys` must have one key per user key (2). Received: 1 keys"),
    (["--user_keys=a", "--item_keys=c"],
     "`--item_keys` is only for --signature=score (score_by_id). Received it "
     "with --signature=recommend_by_id"),
    (["--user_keys=[1, 2]"],
     "`--user_keys` must be comma-separated raw ids or a JSON list of strings. "
     "Received: '[1, 2]'"),
])
def test_raw_id_usage_errors_are_one_line(capsys, argv, message):
  assert client.main(argv + ["--dry_run"]) == 2
  assert capsys.readouterr().err == f"error: {message}\n"


@pytest.mark.parametrize("argv, message", [
    (["--signature=score", "--user_ids=1,2", "--item_ids=3"],
     "`--item_ids` must have one id per user id (2). Received: 1 ids"),
    (["--user_ids=1", "--item_ids=3"],
     "`--item_ids` is only for --signature=score. Received it with "
     "--signature=serving_default"),
    (["--user_ids=1,x"], "`--user_ids` must be comma-separated integers. Received: '1,x'"),
])
def test_usage_errors_are_one_line(capsys, argv, message):
  assert client.main(argv + ["--dry_run"]) == 2
  err = capsys.readouterr().err
  assert err == f"error: {message}\n"


# ------------------------------------------------------- REST on loopback


class _Handler(BaseHTTPRequestHandler):
  reply = (200, {})
  seen = []

  def do_POST(self):  # pylint: disable=invalid-name
    body = self.rfile.read(int(self.headers["Content-Length"]))
    type(self).seen.append((self.path, self.headers["Content-Type"], json.loads(body)))
    status, reply = type(self).reply
    data = json.dumps(reply).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, *args):
    pass


@pytest.fixture
def rest_server():
  server = HTTPServer(("127.0.0.1", 0), _Handler)
  _Handler.seen = []
  thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
  thread.start()
  yield server.server_address[1]
  server.shutdown()
  server.server_close()


def test_rest_request_is_sent_and_columnar_reply_parsed(rest_server):
  # TF Serving writes -inf as -Infinity, which Python's json reads.
  _Handler.reply = (200, {"outputs": {"item_ids": [[4, -1]],
                                      "scores": [[-0.25, float("-inf")]]}})
  outputs, text = _run(["--host=127.0.0.1", f"--port={rest_server}",
                        "--model_name=m", "--user_ids=3"])
  assert outputs == {"item_ids": [[4, -1]], "scores": [[-0.25, float("-inf")]]}
  assert json.loads(text) == outputs
  path, ctype, body = _Handler.seen[0]
  assert path == "/v1/models/m:predict" and ctype == "application/json"
  assert body == {"signature_name": "serving_default", "inputs": {"user_ids": [3]}}


def test_rest_by_raw_id_sends_strings_and_reads_item_keys(rest_server):
  _Handler.reply = (200, {"outputs": {"item_keys": [["sku/4", ""]],
                                      "item_ids": [[3, -1]],
                                      "scores": [[-0.25, float("-inf")]]}})
  outputs, _ = _run(["--host=127.0.0.1", f"--port={rest_server}",
                     "--model_name=m", "--user_keys=u-ñ"])
  assert outputs["item_keys"] == [["sku/4", ""]]
  assert _Handler.seen[0][2] == {"signature_name": "recommend_by_id",
                                 "inputs": {"user_keys": ["u-ñ"]}}


def test_rest_row_reply_is_turned_columnar(rest_server):
  _Handler.reply = (200, {"predictions": [
      {"scores": -0.5, "attention": [1.0, 1.0]},
      {"scores": -0.7, "attention": [0.5, 1.5]}]})
  outputs, _ = _run(["--host=127.0.0.1", f"--port={rest_server}", "--signature=score",
                     "--user_ids=0,1", "--item_ids=2,3", "--format=row"])
  assert outputs == {"scores": [-0.5, -0.7], "attention": [[1.0, 1.0], [0.5, 1.5]]}


def test_rest_server_error_is_one_clear_line(rest_server, capsys):
  _Handler.reply = (400, {"error": "assertion failed: [`user_ids` must be ids in "
                                   "[0, 4874); received an id >= 4874]"})
  assert client.main(["--host=127.0.0.1", f"--port={rest_server}",
                      "--user_ids=99999"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: http://127.0.0.1:")
  assert "HTTP 400: assertion failed: [`user_ids` must be ids in [0, 4874)" in err
  assert err.count("\n") == 1


def test_rest_connection_refused_is_reported(capsys):
  server = HTTPServer(("127.0.0.1", 0), _Handler)
  port = server.server_address[1]
  server.server_close()  # nothing listens there now
  assert client.main(["--host=127.0.0.1", f"--port={port}", "--user_ids=1",
                      "--timeout=5"]) == 2
  assert "error: http://127.0.0.1:" in capsys.readouterr().err


# ------------------------------------------------------- gRPC on loopback


def test_grpc_request_is_sent_and_reply_parsed():
  pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc")
  import grpc  # pylint: disable=g-import-not-at-top
  from concurrent import futures  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=g-import-not-at-top

  seen = []

  class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):

    def Predict(self, request, context):  # pylint: disable=invalid-name
      seen.append(request)
      reply = predict_pb2.PredictResponse()
      reply.outputs["item_ids"].CopyFrom(
          tf.make_tensor_proto(np.array([[4, -1]], np.int64)))
      reply.outputs["scores"].CopyFrom(
          tf.make_tensor_proto(np.array([[-0.25, -np.inf]], np.float32)))
      if request.model_spec.signature_name.endswith("_by_id"):
        reply.outputs["item_keys"].CopyFrom(tf.make_tensor_proto(
            np.array([["sku/ñ".encode(), b""]], object)))
      return reply

  server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
  port = server.add_insecure_port("127.0.0.1:0")
  server.start()
  try:
    outputs, _ = _run(["--protocol=grpc", "--host=127.0.0.1", f"--port={port}",
                       "--model_name=m", "--user_ids=3"])
    by_key, _ = _run(["--protocol=grpc", "--host=127.0.0.1", f"--port={port}",
                      "--model_name=m", "--user_keys=u-ñ"])
  finally:
    server.stop(None)
  assert by_key == {"item_ids": [[4, -1]], "item_keys": [["sku/ñ", ""]],
                    "scores": [[-0.25, float("-inf")]]}
  assert seen[1].model_spec.signature_name == "recommend_by_id"
  assert tf.make_ndarray(seen[1].inputs["user_keys"]).tolist() == ["u-ñ".encode()]
  assert outputs == {"item_ids": [[4, -1]], "scores": [[-0.25, float("-inf")]]}
  request = seen[0]
  assert request.model_spec.name == "m"
  assert request.model_spec.signature_name == "serving_default"
  assert tf.make_ndarray(request.inputs["user_ids"]).tolist() == [3]
