"""The recognition server: the last step of the runtime's fallback chain.

    python -m stages serve --bundle bundles/high --port 8080

`POST /v1/recognize` takes the raw image bytes as the body and answers
{text, confidence, status, model, timings_ms, request_id, events}. `status` is "ok" when the
served bundle is confident (after its own fallback rerun), "low_confidence" when it is not: a
runtime escalating here takes the text only on "ok" (ocr_bundles_runtime/escalate.py), so an
unsure server never overrules an app's local guess. The server's own Recognizer never escalates.

`GET /healthz` -> {status, target, model, model_file, formats, batching}; `GET /metrics` ->
{requests, errors: {code: n}, latency_ms: {p50, p95, p99}, batches (session runs),
batched_items, mean_batch_size, in_flight}.

Errors are JSON {code, detail, retryable}, never a traceback: 400 for an unusable image (the
runtime's ImageError codes E_EMPTY, E_DECODE, E_INPUT), 413 E_TOO_LARGE (body over
--max-body-kb, or an image over the bundle's pixel limit), 415 E_INPUT for a multipart body,
503 E_BUSY past --max-concurrency requests in flight, 500 E_INTERNAL (logged with its traceback
and the request id).

Dynamic batching (models that accept a batch dimension, manifest input.batch): each request is
preprocessed on the worker threads, queued, and one batcher task collects up to --batch items
for at most --batch-wait-ms (it stops waiting as soon as no other request is on its way, so a
lone client pays no wait); items of equal tensor width run as ONE session run (padding would
change the CTC outputs), at most --workers batches at a time. Other models run
`Recognizer.predict` per request on --workers threads. Model work never runs on the event loop.

`python -m stages.serve` is the same server with two extra options the bench uses: --backend
stock (stock ddddocr behind the same HTTP layer) and --no-batching, and --cores to pin it.

One module per job: `settings` (the limits and batching knobs, and their defaults), `backends`
(what is served: a bundle's Recognizer or stock ddddocr), `service` (worker threads, the batch
queue and the metrics), `app` (the Starlette HTTP layer) and `command` (the verb: arguments to
settings and backend, bind, serve).
"""
