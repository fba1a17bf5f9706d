// The openai npm package and plain fetch() against a real tinyembed server.
// Run by tests/test_node_client.py, which starts the server and passes:
//   TINYEMBED_URL       the server (bundled MiniLM, alias text-embedding-3-small, tiny fixture)
//   TINYEMBED_EXPECTED  a JSON file: {texts: [...], vectors: [[...]]} from the engine in Python
//   TINYEMBED_GUARDED_URL  a server started with --api-key (for the 401)
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import OpenAI from "openai";

const BASE = process.env.TINYEMBED_URL;
const GUARDED = process.env.TINYEMBED_GUARDED_URL;
const EXPECTED = JSON.parse(readFileSync(process.env.TINYEMBED_EXPECTED, "utf8"));
const MODEL = "all-MiniLM-L6-v2";

// Every request body the SDK sends, to see what it put on the wire.
const sent = [];
const recordingFetch = (url, init) => {
  sent.push(JSON.parse(init.body ?? "null"));
  return fetch(url, init);
};
const client = new OpenAI({ baseURL: `${BASE}/v1`, apiKey: "unused", maxRetries: 0, fetch: recordingFetch });

function assertClose(actual, expected, tol = 1e-5) {
  assert.equal(actual.length, expected.length);
  let worst = 0;
  for (let i = 0; i < actual.length; i++) worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
  assert.ok(worst <= tol, `max |difference| ${worst} > ${tol}`);
}

test("single input: the SDK asks for base64 by default and decodes it to the engine's floats", async () => {
  sent.length = 0;
  const res = await client.embeddings.create({ model: MODEL, input: EXPECTED.texts[0] });
  assert.equal(sent[0].encoding_format, "base64"); // the SDK's default on the wire...
  const vector = res.data[0].embedding;
  assert.ok(Array.isArray(vector)); // ...handed back decoded
  assert.equal(vector.length, 384);
  assertClose(vector, EXPECTED.vectors[0]);
  assert.equal(res.model, MODEL);
  assert.ok(res.usage.prompt_tokens > 0);
  assert.equal(res.usage.total_tokens, res.usage.prompt_tokens);
});

test("batch input: one vector per text, in input order", async () => {
  const res = await client.embeddings.create({ model: MODEL, input: EXPECTED.texts, encoding_format: "float" });
  assert.deepEqual(res.data.map((d) => d.index), EXPECTED.texts.map((_, i) => i));
  res.data.forEach((d, i) => assertClose(d.embedding, EXPECTED.vectors[i]));
});

test("an explicit base64 request hands back the raw string, the float32 bytes of the vector", async () => {
  const res = await client.embeddings.create({ model: MODEL, input: EXPECTED.texts[1], encoding_format: "base64" });
  const raw = Buffer.from(res.data[0].embedding, "base64");
  const floats = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
  assertClose(Array.from(floats), EXPECTED.vectors[1]);
});

test("dimensions: Matryoshka prefix, renormalised to unit length", async () => {
  const res = await client.embeddings.create({ model: MODEL, input: EXPECTED.texts[0], dimensions: 64 });
  const v = res.data[0].embedding;
  assert.equal(v.length, 64);
  const norm = Math.hypot(...EXPECTED.vectors[0].slice(0, 64));
  assertClose(v, EXPECTED.vectors[0].slice(0, 64).map((x) => x / norm));
  assertClose([Math.hypot(...v)], [1]);
});

test("an alias served with --served-model-name answers as itself", async () => {
  const res = await client.embeddings.create({ model: "text-embedding-3-small", input: EXPECTED.texts[0] });
  assert.equal(res.model, "text-embedding-3-small");
  assertClose(res.data[0].embedding, EXPECTED.vectors[0]);
});

test("models.list and models.retrieve", async () => {
  const ids = [];
  for await (const model of client.models.list()) ids.push(model.id);
  assert.ok(ids.includes(MODEL) && ids.includes("text-embedding-3-small") && ids.includes("tiny"), ids.join());
  const card = await client.models.retrieve(MODEL);
  assert.equal(card.id, MODEL);
  assert.equal(card.object, "model");
});

test("errors arrive as the SDK's typed errors with status, code and param", async () => {
  await assert.rejects(client.embeddings.create({ model: "no-such-model", input: "x" }), (e) => {
    assert.ok(e instanceof OpenAI.NotFoundError, e.constructor.name);
    assert.equal(e.status, 404);
    assert.equal(e.code, "model_not_found");
    assert.equal(e.param, "model");
    return true;
  });
  await assert.rejects(client.embeddings.create({ model: MODEL, input: "x", dimensions: 4096 }), (e) => {
    assert.ok(e instanceof OpenAI.BadRequestError, e.constructor.name);
    assert.equal(e.status, 400);
    assert.equal(e.param, "dimensions");
    return true;
  });
  await assert.rejects(client.embeddings.create({ model: MODEL, input: [] }), (e) => {
    assert.equal(e.status, 400);
    assert.equal(e.type, "invalid_request_error");
    return true;
  });
});

test("a wrong API key is a 401 AuthenticationError", { skip: !GUARDED && "no guarded server" }, async () => {
  const guarded = new OpenAI({ baseURL: `${GUARDED}/v1`, apiKey: "wrong-key", maxRetries: 0 });
  await assert.rejects(guarded.embeddings.create({ input: "x" }), (e) => {
    assert.ok(e instanceof OpenAI.AuthenticationError, e.constructor.name);
    assert.equal(e.status, 401);
    assert.equal(e.code, "invalid_api_key");
    return true;
  });
});

test("plain fetch() without the SDK: float JSON and an error envelope", async () => {
  const ok = await fetch(`${BASE}/v1/embeddings`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model: MODEL, input: EXPECTED.texts }),
  });
  assert.equal(ok.status, 200);
  assert.match(ok.headers.get("content-type"), /^application\/json/);
  const body = await ok.json();
  assert.equal(body.object, "list");
  body.data.forEach((d, i) => {
    assert.equal(d.object, "embedding");
    assertClose(d.embedding, EXPECTED.vectors[i]);
  });

  const bad = await fetch(`${BASE}/v1/embeddings`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: "{not json",
  });
  assert.equal(bad.status, 400);
  const { error } = await bad.json();
  assert.equal(error.type, "invalid_request_error");
  assert.equal(typeof error.message, "string");
});
