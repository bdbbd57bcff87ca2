"""The official Comfy API v2 SDK (PyPI `comfy-sdk`, pinned by scripts/test.sh) against Orchestrator.

Run by `cargo test --test it -- --ignored the_official_sdk` with COMFY_BASE_URL pointing at a real Orchestrator
whose ComfyUI is the fake. Every JSON answer the SDK receives is checked against the contract's schemas: the
pydantic models `comfy_low.models` generates from the spec's openapi.yaml, in strict mode. SSE frames are
checked the same way. Exits non-zero on the first failure.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path

import httpx
from comfy_low.models import _generated as spec
from comfy_sdk import Comfy

checked: dict[str, int] = {}
calls: list[tuple[str, str]] = []

# Which schema each answer of the v2 surface is, by method, path and status.
ROUTES = [
    ("POST", r"/api/v2/jobs", (201,), spec.Job),
    ("GET", r"/api/v2/jobs/[^/]+", (200,), spec.Job),
    ("POST", r"/api/v2/jobs/[^/]+/cancel", (200,), spec.Job),
    ("GET", r"/api/v2/jobs/[^/]+/workflow", (200,), spec.JobWorkflowResponse),
    ("POST", r"/api/v2/assets", (200, 201, 202), spec.Asset),
    ("POST", r"/api/v2/assets/from-hash", (200, 201), spec.Asset),
    ("GET", r"/api/v2/assets/[^/]+", (200,), spec.Asset),
]


def check(response: httpx.Response) -> None:
    """An httpx response hook: validates every JSON answer of /api/v2 against its schema."""
    path = response.request.url.path
    calls.append((response.request.method, path))
    kind = response.headers.get("content-type", "")
    if not path.startswith("/api/v2") or not kind.startswith("application/json"):
        return
    response.read()
    text = response.text
    method = response.request.method
    if response.status_code >= 400:
        spec.ErrorEnvelope.model_validate_json(text, strict=True)
        checked["ErrorEnvelope"] = checked.get("ErrorEnvelope", 0) + 1
        return
    if method == "GET" and path == "/api/v2/jobs":
        page = json.loads(text)
        assert isinstance(page["jobs"], list), page
        for item in page["jobs"]:
            spec.Job.model_validate_json(json.dumps(item), strict=True)
        assert "next_cursor" not in page or isinstance(page["next_cursor"], str), page
        checked["JobList"] = checked.get("JobList", 0) + 1
        return
    if method == "GET" and path == "/api/v2/health":
        return
    for route_method, pattern, statuses, model in ROUTES:
        if method == route_method and re.fullmatch(pattern, path) and response.status_code in statuses:
            model.model_validate_json(text, strict=True)
            checked[model.__name__] = checked.get(model.__name__, 0) + 1
            return
    raise AssertionError(f"an answer no schema covers: {method} {path} {response.status_code} {text[:200]}")


FRAMES = {"status": spec.StatusEvent, "progress": spec.Progress, "output": spec.Output,
          "preview": spec.PreviewEvent, "log": spec.LogEvent}


def check_frame(event: str, data: dict) -> None:
    FRAMES[event].model_validate_json(json.dumps(data), strict=True)
    checked[f"sse:{event}"] = checked.get(f"sse:{event}", 0) + 1


def main() -> None:
    base = os.environ["COMFY_BASE_URL"]
    long_workflow = json.loads(Path(os.environ["LONG_WORKFLOW"]).read_text())
    client = Comfy()
    client._low._client.event_hooks["response"].append(check)
    raw = httpx.Client(base_url=base, event_hooks={"response": [check]})

    # An input image: hashed locally, probed by hash, uploaded on a miss.
    png = b"\x89PNG\r\n\x1a\n" + bytes((i * 7) % 251 for i in range(20_000))
    asset = client.assets.from_bytes(png, filename="photo.png", content_type="image/png")
    graph = {
        "10": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "sdk", "images": ["10", 0]}},
    }
    wf = client.workflows.from_json(graph)
    wf.set_input("10", "image", asset)

    # Submitted twice under one key: one job, the repeat replayed.
    key = "sdk-suite-key-1"
    job = client.submit(wf, idempotency_key=key, metadata={"suite": "sdk"})
    again = client.submit(wf, idempotency_key=key, metadata={"suite": "sdk"})
    assert again.id == job.id, (again.id, job.id)
    assert job.metadata == {"suite": "sdk"}, job.metadata

    # The raw stream, every frame checked against its schema; then the SDK's typed events.
    frames = list(client._low.get_job_events(job.id))
    for frame in frames:
        check_frame(frame.event, frame.data)
    assert frames[-1].event == "status" and frames[-1].data["status"] == "succeeded", frames[-1]
    result = job.result()
    assert result.status == "succeeded", result.status

    outputs = job.get_outputs("9")
    assert len(outputs) == 1, job.outputs
    out = outputs[0]
    assert out.type == "image", out.type
    whole = out.to_bytes()
    assert len(whole) == out.size_bytes and len(whole) > 40, (len(whole), out.size_bytes)
    head = out.to_bytes(range=(0, 19))
    assert head == whole[:20], "a range is the same bytes"
    with tempfile.TemporaryDirectory() as folder:
        written = out.to_file(Path(folder) / out.name, range=(10, 19))
        assert written.read_bytes() == whole[10:20]
    again = client.jobs.get(job.id)
    workflow = again.get_workflow()
    assert workflow.format == "api" and "10" in workflow.graph, workflow
    assert client.assets.get(asset.commit()).hash is not None

    # The same bytes again: the SDK finds them by hash and uploads nothing.
    uploads = calls.count(("POST", "/api/v2/assets"))
    again_asset = client.assets.from_bytes(png, filename="photo.png", content_type="image/png")
    again_asset.commit()
    assert again_asset.hash == client.assets.get(asset.commit()).hash
    assert calls.count(("POST", "/api/v2/assets")) == uploads, "the repeat uploaded the bytes again"
    assert ("POST", "/api/v2/assets/from-hash") in calls, calls

    # A long job: its progress streams, then it is cancelled.
    long = client.submit(client.workflows.from_json(long_workflow), metadata={"suite": "sdk", "kind": "long"})
    seen = []
    for event in long.events():
        seen.append(type(event).__name__)
        if type(event).__name__ == "Progress":
            break
    long.cancel()
    assert long.status in ("canceling", "canceled"), long.status
    long.wait(timeout=30)
    assert long.status == "canceled", long.status

    # Listing by label: both jobs, newest first.
    listed = [summary.id for summary in client.list_jobs(metadata={"suite": "sdk"})]
    assert listed[:2] == [long.id, job.id], listed
    assert [s.id for s in client.list_jobs(metadata={"kind": "long"})] == [long.id]

    # Error answers are the contract's envelope.
    missing = raw.get("/api/v2/jobs/0190d6a1-0000-7000-8000-000000000000")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    ui = raw.post("/api/v2/jobs", json={"workflow": {"nodes": [], "links": []}})
    assert ui.status_code == 422 and ui.json()["error"]["code"] == "workflow_format_ui"
    assert raw.get("/api/v2/health").status_code == 200
    # The other refusals of the contract, each answer checked by the hook.
    ref = {"__type": "core/ASSET", "info": {"id": "4a4b5f2e-0000-4000-8000-000000000000"}}
    gone = raw.post("/api/v2/jobs", json={"workflow": {**graph, "10": {"class_type": "LoadImage", "inputs": {"image": ref}}}})
    assert gone.status_code == 422 and gone.json()["error"]["code"] == "missing_asset", gone.text
    reuse = raw.post("/api/v2/jobs", headers={"Idempotency-Key": key}, json={"workflow": long_workflow})
    assert reuse.status_code == 422 and reuse.json()["error"]["code"] == "idempotency_key_reuse", reuse.text
    wrong = raw.post("/api/v2/assets", data={"content_type": "image/png", "file_path": "x.png",
                                             "expected_hash": "blake3:" + "0" * 64},
                     files={"file": ("x.png", b"other bytes", "image/png")})
    assert wrong.status_code == 409 and wrong.json()["error"]["code"] == "hash_mismatch", wrong.text
    nothing = raw.post("/api/v2/assets/from-hash", json={"hash": "blake3:" + "1" * 64})
    assert nothing.status_code == 404 and nothing.json()["error"]["code"] == "blob_not_found", nothing.text
    assert raw.head("/api/v2/assets/by-hash/blake3:" + "1" * 64).status_code == 404
    assert raw.get("/api/v2/assets/4a4b5f2e-0000-4000-8000-000000000000").status_code == 404
    page = raw.get("/api/v2/jobs", params={"limit": 1})
    assert page.status_code == 200 and len(page.json()["jobs"]) == 1 and "next_cursor" in page.json(), page.text
    bad_cursor = raw.get("/api/v2/jobs", params={"cursor": "nope"})
    assert bad_cursor.status_code == 400 and bad_cursor.json()["error"]["code"] == "invalid_cursor"
    finished = raw.post(f"/api/v2/jobs/{job.id}/cancel")
    assert finished.status_code == 200 and finished.json()["status"] == "succeeded", finished.text
    beyond = raw.get(f"/api/v2/assets/{out.id}/content", headers={"Range": "bytes=100000-"})
    assert beyond.status_code == 416, beyond.status_code

    asset.delete()
    print("checked against the contract's schemas:", json.dumps(checked, sort_keys=True))
    for needed in ("Job", "Asset", "JobList", "JobWorkflowResponse", "ErrorEnvelope", "sse:status", "sse:output"):
        assert checked.get(needed, 0) > 0, f"no {needed} was checked: {checked}"
    print("the official SDK: every step passed", f"(typed events seen: {seen}; requests: {len(calls)})")


if __name__ == "__main__":
    try:
        main()
    except Exception:
        import traceback

        traceback.print_exc()
        sys.exit(1)
