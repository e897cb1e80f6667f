// Runs ONNX models in onnxruntime-web's WebAssembly build for the Python tests.
// One JSON request a line on stdin, one JSON answer a line on stdout:
//   {"model": "<path>", "feeds": {"X": {"dtype": "float32", "shape": [2, 3], "data": "<base64>"}}}
//   -> {"outputs": [{"name": "Y", "dtype": "float32", "shape": [2, 3], "data": "<base64>"}]}
//   or {"error": "..."}
// A model's session is kept between requests that name the same file.
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import * as ort from "onnxruntime-web";

ort.env.wasm.numThreads = 1; // no worker threads: one process, one thread
ort.env.logLevel = "error";

const ARRAYS = {
  float32: Float32Array,
  float64: Float64Array,
  float16: Uint16Array, // the bits; onnxruntime-web reads float16 tensors from them
  int32: Int32Array,
  int64: BigInt64Array,
  bool: Uint8Array,
};

function decode(feed) {
  const bytes = Buffer.from(feed.data, "base64");
  const Kind = ARRAYS[feed.dtype];
  if (!Kind) throw new Error(`unsupported dtype ${feed.dtype}`);
  const copy = new Uint8Array(bytes); // aligned, owned
  const data = new Kind(copy.buffer, 0, copy.byteLength / Kind.BYTES_PER_ELEMENT);
  return new ort.Tensor(feed.dtype, data, feed.shape);
}

function encode(name, tensor) {
  const data = tensor.data;
  const view = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return { name, dtype: tensor.type, shape: tensor.dims, data: view.toString("base64") };
}

let cached = { path: null, session: null };

async function handle(request) {
  if (cached.path !== request.model) {
    if (cached.session) await cached.session.release();
    const bytes = readFileSync(request.model);
    cached = { path: request.model, session: await ort.InferenceSession.create(bytes) };
  }
  const feeds = {};
  for (const [name, feed] of Object.entries(request.feeds)) feeds[name] = decode(feed);
  const results = await cached.session.run(feeds);
  return { outputs: cached.session.outputNames.map((name) => encode(name, results[name])) };
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) continue;
  let answer;
  try {
    answer = await handle(JSON.parse(line));
  } catch (error) {
    answer = { error: String(error && error.message ? error.message : error) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
