"""Micro-batching: callers get exactly their own rows and outputs; batches merge; failures stay local."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.artifacts import build_artifact
from mlvisor.server.app import create_app
from mlvisor.server.batcher import Batcher, merge, split
from mlvisor.server.settings import Settings


@given(st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=30), st.integers(1, 5))
@settings(max_examples=100, deadline=None)
def test_merge_then_split_returns_each_block(sizes: list[int], width: int) -> None:
    blocks = []
    start = 0
    for n in sizes:
        blocks.append(np.arange(start * width, (start + n) * width, dtype=float).reshape(n, width))
        start += n
    merged, offsets = merge(blocks)
    assert merged.shape == (sum(sizes), width) and offsets[-1] == sum(sizes)
    for got, want in zip(split(merged, offsets), blocks, strict=True):
        assert np.array_equal(got, want)
    for got, n in zip(split(merged[:, 0], offsets), sizes, strict=True):
        assert got.shape == (n,)
    assert split(None, offsets) == [None] * len(sizes)


def _echo_predict(calls: list[int]):
    """A fake model: label = row sum, proba = the row itself; records the batch sizes."""

    def predict(x: np.ndarray, want_labels: bool, want_proba: bool, finite: bool):
        calls.append(x.shape[0])
        if np.any(x == -1):
            raise ValueError("poison row")
        return (x.sum(axis=1) if want_labels else None), (x.copy() if want_proba else None)

    return predict


async def test_batcher_merges_and_splits_exactly() -> None:
    calls: list[int] = []
    b = Batcher(_echo_predict(calls), max_batch_size=64, max_latency_ms=50)
    b.start()
    rng = random.Random(1)
    xs = [np.full((rng.randint(1, 5), 3), float(i)) for i in range(300)]
    wants = [(rng.random() < 0.7, rng.random() < 0.5) for _ in xs]
    futs = [b.submit(x, wl, wp, True) for x, (wl, wp) in zip(xs, wants, strict=True)]
    results = await asyncio.gather(*futs)
    for x, (wl, wp), (labels, proba) in zip(xs, wants, results, strict=True):
        if wl:
            assert np.array_equal(labels, x.sum(axis=1))
        if wp:
            assert np.array_equal(proba, x)
    assert sum(calls) == sum(x.shape[0] for x in xs)
    assert len(calls) < len(xs) and max(calls) <= 64
    await b.stop()


async def test_failing_batch_does_not_poison_neighbours() -> None:
    calls: list[int] = []
    b = Batcher(_echo_predict(calls), max_batch_size=64, max_latency_ms=50)
    b.start()
    xs = [np.full((1, 2), float(i)) for i in range(10)]
    xs[4] = np.full((1, 2), -1.0)
    results = await asyncio.gather(*(b.submit(x, True, False, True) for x in xs), return_exceptions=True)
    for i, r in enumerate(results):
        if i == 4:
            assert isinstance(r, ValueError) and "poison" in str(r)
        else:
            assert np.array_equal(r[0], xs[i].sum(axis=1))
    await b.stop()


async def test_batching_disabled_predicts_each_request_alone() -> None:
    calls: list[int] = []
    b = Batcher(_echo_predict(calls), max_batch_size=1, max_latency_ms=5)
    b.start()
    xs = [np.full((1, 2), float(i)) for i in range(20)]
    await asyncio.gather(*(b.submit(x, True, True, True) for x in xs))
    assert calls == [1] * 20
    await b.stop()


@pytest.fixture
async def app_client(tmp_path: Path):
    path, model, X = build_artifact(tmp_path)
    app = create_app(Settings(model_dir=path, max_batch_size=64, max_latency_ms=20, grpc_port=0))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            deadline = time.monotonic() + 20
            while (await client.get("/v2/health/ready")).status_code != 200:
                assert time.monotonic() < deadline, "model never became ready"
                await asyncio.sleep(0.01)
            yield app, client, model, X


async def test_many_concurrent_callers_get_their_own_rows(app_client) -> None:
    app, client, model, X = app_client
    rng = np.random.default_rng(7)
    options = [["predict"], ["predict_proba"], ["predict_proba", "predict"], None]
    jobs = []
    for i in range(160):
        n = int(rng.integers(1, 6))
        rows = X[rng.integers(0, len(X), n)] + rng.normal(0, 0.2, (n, 4))
        jobs.append((rows, options[i % 4]))

    async def call(rows: np.ndarray, outputs):
        body = {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64", "data": rows.tolist()}],
                "id": str(id(rows))}
        if outputs is not None:
            body["outputs"] = [{"name": o} for o in outputs]
        if rng.random() < 0.5:
            return await client.post("/v2/models/iris/infer", json=body)
        return await client.post("/v1/models/iris:predict", json={"instances": rows.tolist()})

    responses = await asyncio.gather(*(call(rows, outs) for rows, outs in jobs))
    for (rows, outs), r in zip(jobs, responses, strict=True):
        assert r.status_code == 200, r.text
        body = r.json()
        if "predictions" in body:
            assert body["predictions"] == model.predict(rows).tolist()
            continue
        assert body["id"] == str(id(rows))
        names = [o["name"] for o in body["outputs"]]
        assert names == (outs or ["predict", "predict_proba"])
        for o in body["outputs"]:
            if o["name"] == "predict":
                assert o["data"] == model.predict(rows).tolist()
            else:
                assert np.array_equal(np.reshape(o["data"], o["shape"]), model.predict_proba(rows))
    state = app.state.mlvisor
    assert state.batcher.predict_calls < len(jobs) + 1  # +1: warm-up does not go through the batcher
    text = (await client.get("/metrics")).text
    count = float(next(ln.split()[-1] for ln in text.splitlines() if ln.startswith("mlvisor_batch_requests_count")))
    total = float(next(ln.split()[-1] for ln in text.splitlines() if ln.startswith("mlvisor_batch_requests_sum")))
    assert total == len(jobs) and count < len(jobs), (count, total)


async def test_health_answers_while_a_slow_predict_runs(app_client) -> None:
    app, client, _model, X = app_client
    state = app.state.mlvisor
    release = threading.Event()
    started = threading.Event()
    real = state.batcher._predict

    def slow(*a):
        started.set()
        release.wait(10)
        return real(*a)

    state.batcher._predict = slow
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": X[0].tolist()}]}
    infer = asyncio.create_task(client.post("/v2/models/iris/infer", json=body))
    while not started.is_set():
        await asyncio.sleep(0.005)
    # the predict thread is blocked: the loop must still answer health and metrics
    assert (await client.get("/v2/health/live")).status_code == 200
    assert (await client.get("/v2/health/ready")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200
    assert not infer.done()
    release.set()
    assert (await infer).status_code == 200
