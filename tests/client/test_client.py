"""service.client against a real server: each method agrees with the raw HTTP answer (bit for
bit), errors raise their typed class with the exact code, and retries happen when they should."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.client import (
    ApiError,
    AsyncClient,
    Client,
    ClientError,
    ConnectionFailed,
    InvalidModel,
    InvalidRate,
    LayerNotFound,
    ModelNotFound,
    NameConflict,
    NotConnected,
    NotFound,
    RankMismatch,
    RetryPolicy,
    StoreUnavailable,
    Unauthorized,
    UnknownTensor,
    ValidationError,
)
from tests.api.helpers import assert_problem, load, npy, unique
from tests.api.test_models import first_relu, images, plain
from tests.api.test_models import infer as raw_infer
from tests.conftest import Server, client_of, serving
from tests.golden import GOLDEN
from tests.postgres import find_bindir
from tests.store.test_faults import DurablePostgres

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="default_random_engine is libstdc++'s only"
)
ONNX = {"content-type": "application/octet-stream"}
NO_WAIT = RetryPolicy(backoff=0.0, jitter=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(
        tmp_path_factory,
        "client",
        max_mc_samples=16,
        max_model_bytes=4_000_000,
        max_tensor_elements=100_000,
    )


@pytest.fixture
def raw(server: Server) -> Iterator[httpx.Client]:
    yield from client_of(server)


@pytest.fixture
def sd(server: Server) -> Iterator[Client]:
    with Client(server.url, retry=NO_WAIT) as client:
        yield client


def spec(**fields: Any) -> dict[str, Any]:
    return {"kind": "spatial_dropout_2d", "rate": 0.5, "name": unique("sd"), **fields}


# -- layers --------------------------------------------------------------------------------


def test_layers_agree_with_the_raw_answers(sd: Client, raw: httpx.Client) -> None:
    layer = sd.create_layer(spec(seed=7))
    assert layer == raw.get(f"/layers/{layer['id']}").json()
    assert sd.get_layer(layer["name"]) == layer
    keras = sd.create_layer({"class_name": "SpatialDropout1D", "config": {"rate": 0.25}})
    assert keras["kind"] == "spatial_dropout_1d" and keras["rate"] == 0.25
    assert sd.keras(layer["name"]) == raw.get(f"/layers/{layer['name']}/keras").json()
    onnx = sd.export_onnx(layer["name"], opset=17, seed=3)
    assert onnx == raw.get(f"/layers/{layer['name']}/onnx?opset=17&seed=3").content
    # Pagination: pages of one walk the same list the server gives in one page.
    everything = raw.get("/layers", params={"limit": 1000}).json()["items"]
    assert list(sd.iter_layers(page_size=1)) == everything
    first = sd.list_layers(limit=1)
    assert first["items"] == everything[:1] and first["next_cursor"] is not None
    assert sd.list_layers(limit=1, cursor=first["next_cursor"])["items"] == everything[1:2]
    sd.delete_layer(layer["id"])
    assert raw.get(f"/layers/{layer['id']}").status_code == 404


def test_a_name_with_reserved_characters_is_one_path_segment(sd: Client) -> None:
    name = f"a b?c#%2F{unique()}"
    sd.create_layer(spec(name=name))
    assert sd.get_layer(name)["name"] == name
    sd.delete_layer(name)
    with pytest.raises(LayerNotFound):
        sd.get_layer(name)


# -- apply ---------------------------------------------------------------------------------


# A stored SpatialDropout1D is channels_last, as in Keras; the kernel's channels_first case
# has no layer to run it.
STORABLE = [
    g
    for g in GOLDEN
    if not (
        g.config.kind.value == "spatial_dropout_1d"
        and g.config.data_format.value == "channels_first"
    )
]


@pytest.mark.parametrize("case", STORABLE, ids=lambda g: f"{g.config.kind.value}-{g.seed}")
def test_apply_gives_the_golden_mask_and_the_raw_npy_answer(
    sd: Client, raw: httpx.Client, case: Any
) -> None:
    config = case.config
    fields: dict[str, Any] = {"kind": config.kind.value, "rate": config.rate}
    if config.data_format is not None and config.kind.value != "dropout":
        fields["data_format"] = config.data_format.value
    if config.noise_shape is not None:
        fields["noise_shape"] = list(config.noise_shape)
    name = sd.create_layer(spec(**fields))["name"]
    x = np.random.default_rng(case.seed % 1000).standard_normal(case.shape).astype(np.float32)
    answer = sd.apply(
        name, x, training=True, seed=case.seed, sample_offset=case.offset, return_mask=True
    )
    assert answer.seed == case.seed and answer.layer == name
    assert answer.mask is not None
    assert answer.mask.reshape(-1).tolist() == np.array(case.mask, bool).reshape(-1).tolist()
    got = raw.post(
        "/apply",
        params={
            "layer": name,
            "training": "true",
            "seed": case.seed,
            "sample_offset": case.offset,
        },
        content=npy(x),
        headers={"content-type": "application/x-npy"},
    )
    assert got.status_code == 200, got.text
    binary = sd.apply(name, x, training=True, seed=case.seed, sample_offset=case.offset)
    assert binary.seed == int(got.headers["x-seed"])
    assert binary.output.dtype == x.dtype and binary.output.shape == x.shape
    assert binary.output.tobytes() == load(got.content).tobytes()
    assert answer.output.tobytes() == binary.output.tobytes()  # the JSON form is exact too


@pytest.mark.parametrize("dtype", ["float16", "float64", "bfloat16"])
def test_apply_keeps_the_dtype_bit_for_bit(sd: Client, dtype: str) -> None:
    name = sd.create_layer(spec(seed=5))["name"]
    x = np.random.default_rng(1).standard_normal((2, 3, 3, 4)).astype(np.dtype(dtype))
    binary = sd.apply(name, x, training=True)
    shown = sd.apply(name, x, training=True, return_mask=True)
    assert binary.output.dtype == x.dtype == shown.output.dtype
    assert binary.output.tobytes() == shown.output.tobytes()
    assert binary.seed == shown.seed == 5
    assert not np.array_equal(binary.output.astype(np.float32), x.astype(np.float32))
    inference = sd.apply(name, x)
    assert inference.output.tobytes() == x.tobytes()


@linux_only
def test_the_onnxruntime_engine_gives_the_kernels_answer(sd: Client) -> None:
    name = sd.create_layer(spec())["name"]
    x = np.ones((3, 2, 2, 5), np.float32)
    a = sd.apply(name, x, training=True, seed=9, engine="onnxruntime")
    b = sd.apply(name, x, training=True, seed=9)
    assert a.output.tobytes() == b.output.tobytes()


def test_a_drawn_seed_replays(sd: Client) -> None:
    name = sd.create_layer(spec())["name"]
    x = np.ones((4, 2, 2, 8), np.float32)
    first = sd.apply(name, x, training=True)
    again = sd.apply(name, x, training=True, seed=first.seed)
    assert again.output.tobytes() == first.output.tobytes()


# -- errors --------------------------------------------------------------------------------


def test_errors_raise_their_class_with_the_servers_code(sd: Client, raw: httpx.Client) -> None:
    taken = sd.create_layer(spec())["name"]
    cases: list[tuple[Any, type[ApiError], int, str, httpx.Response]] = [
        (
            lambda: sd.get_layer("nope-" + taken),
            LayerNotFound,
            404,
            "layer_not_found",
            raw.get(f"/layers/nope-{taken}"),
        ),
        (
            lambda: sd.create_layer(spec(name=taken)),
            NameConflict,
            409,
            "name_conflict",
            raw.post("/layers", json=spec(name=taken)),
        ),
        (
            lambda: sd.create_layer(spec(rate=1.5)),
            InvalidRate,
            422,
            "invalid_rate",
            raw.post("/layers", json=spec(rate=1.5)),
        ),
        (
            lambda: sd.create_layer({"kind": "spatial_dropout_2d", "rate": "x"}),
            ValidationError,
            422,
            "validation_error",
            raw.post("/layers", json={"kind": "spatial_dropout_2d", "rate": "x"}),
        ),
        (
            lambda: sd.apply(taken, np.ones((2, 3), np.float32)),
            RankMismatch,
            422,
            "rank_mismatch",
            raw.post(
                f"/apply?layer={taken}",
                content=npy(np.ones((2, 3), np.float32)),
                headers={"content-type": "application/x-npy"},
            ),
        ),
        (
            lambda: sd.get_model("nope"),
            ModelNotFound,
            404,
            "model_not_found",
            raw.get("/models/nope"),
        ),
        (
            lambda: sd.put_model(unique("m"), b"not a model"),
            InvalidModel,
            422,
            "invalid_model",
            raw.put(f"/models/{unique('m')}", content=b"not a model", headers=ONNX),
        ),
        (
            lambda: sd.compose(taken, plain(), after=["no_such_tensor"]),
            UnknownTensor,
            422,
            "unknown_tensor",
            raw.post(
                f"/layers/{taken}/compose?after=no_such_tensor", content=plain(), headers=ONNX
            ),
        ),
    ]
    for call, kind, status, code, response in cases:
        problem = assert_problem(response, status, code)
        with pytest.raises(kind) as caught:
            call()
        error = caught.value
        assert type(error) is kind
        assert (error.status, error.code, error.detail) == (status, code, problem["detail"])
        assert error.body == problem
    with pytest.raises(ValidationError) as invalid:
        sd.create_layer({"kind": "spatial_dropout_2d", "rate": "x"})
    assert invalid.value.body["errors"]  # the per-field list comes through


def test_a_code_without_a_class_of_its_own_raises_its_status_family(sd: Client) -> None:
    name = sd.create_layer(spec())["name"]
    with pytest.raises(ApiError) as caught:
        sd.export_onnx(name, opset=1)
    assert type(caught.value).__name__ == "Unprocessable"
    assert caught.value.code == "unsupported_opset"


def test_a_v2_error_has_its_status_and_no_code(sd: Client, raw: httpx.Client) -> None:
    with pytest.raises(NotFound) as caught:
        sd.infer("nope", {"input": np.ones((1, 2), np.float32)})
    expected = raw.post("/v2/models/nope/infer", json={"inputs": []})
    assert expected.status_code == 404
    assert type(caught.value) is NotFound
    assert (caught.value.status, caught.value.code) == (404, None)
    assert caught.value.detail == expected.json()["error"]


# -- compose, models and Monte Carlo -------------------------------------------------------


@linux_only
def test_compose_models_and_monte_carlo_agree_with_raw_http(sd: Client, raw: httpx.Client) -> None:
    layer = sd.create_layer(spec(data_format="channels_first"))["name"]
    after = [first_relu(plain()), "features"]
    composed = sd.compose(layer, plain(), after=after, seed=11)
    expected = raw.post(
        f"/layers/{layer}/compose",
        params={"after": after, "seed": 11},
        content=plain(),
        headers=ONNX,
    )
    assert composed.seed == 11 == int(expected.headers["x-seed"])
    assert composed.model == expected.content

    name = unique("m")
    stored = sd.put_model(name, composed.model)
    assert stored.created and stored.model == raw.get(f"/models/{name}").json()
    assert len(stored.model["layers"]) == 2
    assert not sd.put_model(name, composed.model).created  # replaced
    assert sd.get_model(name) == raw.get(f"/models/{name}").json()
    assert sd.model_onnx(name) == composed.model
    names = [m["name"] for m in sd.iter_models(page_size=1)]
    assert name in names
    assert names == [m["name"] for m in raw.get("/models").json()["items"]]

    x = images(3)
    cases: list[dict[str, Any]] = [
        {},
        {"training": True, "seed": 5},
        {"mc_samples": 4, "seed": 100},
        {"mc_samples": 4, "seed": 100, "mc_statistics": True},
    ]
    for parameters in cases:
        got = sd.infer(name, {"image": x}, **parameters)
        want, used = raw_infer(raw, name, x, **parameters)
        assert got.parameters == used
        assert got.seed == used.get("seed")
        assert list(got.outputs) == list(want)
        for out, array in want.items():
            assert got.outputs[out].dtype == np.float32
            assert got.outputs[out].tobytes() == array.tobytes(), (parameters, out)
    picked = sd.infer(name, {"image": x}, mc_samples=2, seed=1, outputs=["logits"])
    assert list(picked.outputs) == ["logits"] and picked.outputs["logits"].shape == (2, 3, 5)
    # Lists travel comma-separated, as V2 parameter values are scalars.
    listed = sd.infer(
        name,
        {"image": x},
        mc_samples=16,
        seed=3,
        mc_statistics=["quantiles", "entropy"],
        mc_quantiles=[0.25, 0.75],
        mc_softmax=True,
        mc_tolerance=0.5,
        outputs=["logits"],
    )
    want, used = raw_infer(
        raw,
        name,
        x,
        mc_samples=16,
        seed=3,
        mc_statistics="quantiles,entropy",
        mc_quantiles="0.25,0.75",
        mc_softmax=True,
        mc_tolerance=0.5,
    )
    assert listed.samples_used == used["mc_samples_used"] == 8
    assert listed.outputs["logits_quantiles"].tobytes() == want["logits_quantiles"].tobytes()
    assert listed.outputs["logits_entropy"].tobytes() == want["logits_entropy"].tobytes()

    sd.delete_model(name)
    with pytest.raises(ModelNotFound):
        sd.model_onnx(name)


def test_export_and_compose_take_the_mask_form(sd: Client, raw: httpx.Client) -> None:
    layer = sd.create_layer(spec(data_format="channels_first", seed=4))["name"]
    portable = sd.export_onnx(layer, mask="portable")
    assert portable == raw.get(f"/layers/{layer}/onnx", params={"mask": "portable"}).content
    assert portable != sd.export_onnx(layer)
    composed = sd.compose(layer, plain(), after=["features"], seed=3, mask="portable")
    expected = raw.post(
        f"/layers/{layer}/compose",
        params={"after": "features", "seed": 3, "mask": "portable"},
        content=plain(),
        headers=ONNX,
    )
    assert composed.model == expected.content


@linux_only
def test_a_layer_over_v2_gives_the_apply_answer(sd: Client) -> None:
    name = sd.create_layer(spec())["name"]
    x = np.random.default_rng(0).standard_normal((2, 3, 3, 4)).astype(np.float32)
    answer = sd.infer(name, {"input": x}, training=True, seed=8)
    applied = sd.apply(name, x, training=True, seed=8, return_mask=True)
    assert answer.outputs["output"].tobytes() == applied.output.tobytes()
    assert answer.seed == 8


# -- async ---------------------------------------------------------------------------------


@linux_only
def test_the_async_client_answers_as_the_sync_one(sd: Client, server: Server) -> None:
    x = images(2)
    layer = sd.create_layer(spec(data_format="channels_first", seed=4))["name"]

    async def scenario() -> dict[str, Any]:
        async with AsyncClient(server.url, retry=NO_WAIT) as client:
            created = await client.create_layer(spec())
            found = await client.get_layer(created["id"])
            listed = [item async for item in client.iter_layers(page_size=2)]
            keras = await client.keras(layer)
            onnx = await client.export_onnx(layer, seed=2)
            applied = await client.apply(layer, x, training=True)
            composed = await client.compose(layer, plain(), after=["features"])
            name = unique("m")
            stored = await client.put_model(name, composed.model)
            info = await client.get_model(name)
            models = [m["name"] async for m in client.iter_models(page_size=1)]
            page = await client.list_models(limit=1)
            bytes_ = await client.model_onnx(name)
            mc = await client.infer(name, {"image": x}, mc_samples=3, seed=2)
            errors = []
            for failing in (client.get_layer("nope"), client.delete_model("nope")):
                try:
                    await failing
                except ApiError as exc:
                    errors.append((type(exc), exc.code))
            await client.delete_model(name)
            await client.delete_layer(created["id"])
            return locals()

    got = asyncio.run(scenario())
    assert got["found"] == got["created"]
    assert [item["id"] for item in got["listed"]][-1] == got["created"]["id"]
    assert got["keras"] == sd.keras(got["layer"])
    assert got["onnx"] == sd.export_onnx(got["layer"], seed=2)
    same = sd.apply(got["layer"], x, training=True)
    assert got["applied"].seed == same.seed == 4
    assert got["applied"].output.tobytes() == same.output.tobytes()
    assert got["composed"].model == sd.compose(got["layer"], plain(), after=["features"]).model
    assert got["stored"].created and got["info"]["name"] == got["name"]
    assert got["name"] in got["models"] and len(got["page"]["items"]) == 1
    assert got["bytes_"] == got["composed"].model
    sync_name = unique("m")
    sd.put_model(sync_name, got["composed"].model)
    want = sd.infer(sync_name, {"image": x}, mc_samples=3, seed=2)
    assert want.parameters == got["mc"].parameters
    for out, array in want.outputs.items():
        assert got["mc"].outputs[out].tobytes() == array.tobytes()
    assert got["errors"] == [(LayerNotFound, "layer_not_found"), (ModelNotFound, "model_not_found")]
    with pytest.raises(LayerNotFound):
        sd.get_layer(got["created"]["id"])


# -- retries, auth -------------------------------------------------------------------------


def _start_on_first_retry(server: Server, seen: list[tuple[int, ClientError]]) -> RetryPolicy:
    def on_retry(attempt: int, error: ClientError) -> None:
        seen.append((attempt, error))
        if attempt == 1:
            server.start()

    return RetryPolicy(attempts=3, backoff=0.0, jitter=False, on_retry=on_retry)


def test_a_refused_connection_is_retried_until_the_server_is_up(tmp_path: Path) -> None:
    server = Server(tmp_path / "late.sqlite3")
    seen: list[tuple[int, ClientError]] = []
    try:
        with Client(server.url, retry=_start_on_first_retry(server, seen)) as sd:
            # POST /layers is not resent after an answer, but a connect failure sent nothing.
            layer = sd.create_layer(spec())
            assert sd.get_layer(layer["id"]) == layer
    finally:
        server.stop()
    assert [(attempt, type(error)) for attempt, error in seen] == [(1, NotConnected)]


def test_the_async_client_retries_too(tmp_path: Path) -> None:
    server = Server(tmp_path / "late.sqlite3")
    seen: list[tuple[int, ClientError]] = []

    async def scenario() -> list[Any]:
        async with AsyncClient(server.url, retry=_start_on_first_retry(server, seen)) as sd:
            page = await sd.list_layers()
            return page["items"]

    try:
        assert asyncio.run(scenario()) == []
    finally:
        server.stop()
    assert [(attempt, type(error)) for attempt, error in seen] == [(1, NotConnected)]


def test_retries_are_bounded(tmp_path: Path) -> None:
    url = Server(tmp_path / "never.sqlite3").url  # nothing listens there
    seen: list[int] = []
    policy = RetryPolicy(
        attempts=3, backoff=0.0, jitter=False, on_retry=lambda a, e: seen.append(a)
    )
    with Client(url, retry=policy) as sd, pytest.raises(ConnectionFailed):
        sd.list_layers()
    assert seen == [1, 2]


def test_a_503_is_retried_after_its_retry_after(tmp_path: Path) -> None:
    """PostgreSQL down: GET /layers is 503 store_unavailable with Retry-After, which is waited;
    PostgreSQL comes back meanwhile and the resent call answers. POST /layers is not resent."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    postgres = DurablePostgres(bindir).start()
    try:
        url = postgres.new_database()
        seen: list[tuple[int, ClientError]] = []

        def on_retry(attempt: int, error: ClientError) -> None:
            seen.append((attempt, error))
            postgres.boot()

        env = {"SPATIAL_DROPOUT_DATABASE_URL": url}
        with (
            Server(tmp_path / "unused.sqlite3", env=env) as server,
            Client(server.url, retry=RetryPolicy(on_retry=on_retry, jitter=False)) as sd,
        ):
            sd.create_layer(spec())
            postgres.crash()
            with pytest.raises(StoreUnavailable) as refused:
                sd.create_layer(spec())
            assert refused.value.retry_after == 1.0
            assert seen == []  # not repeatable: raised, not resent
            assert len(sd.list_layers()["items"]) == 1
    finally:
        postgres.stop()
    assert len(seen) == 1 and isinstance(seen[0][1], StoreUnavailable)
    assert (seen[0][1].status, seen[0][1].code) == (503, "store_unavailable")


def test_the_bearer_token_is_sent(tmp_path_factory: pytest.TempPathFactory) -> None:
    for server in serving(tmp_path_factory, "client-auth", api_tokens="s3cret"):
        with Client(server.url, retry=NO_WAIT) as anonymous, pytest.raises(Unauthorized) as no:
            anonymous.create_layer(spec())
        assert (no.value.status, no.value.code) == (401, "unauthorized")
        with Client(server.url, token="s3cret", retry=NO_WAIT) as sd:
            assert sd.create_layer(spec())["rate"] == 0.5


def test_a_lent_httpx_client_stays_open(server: Server) -> None:
    with httpx.Client(base_url=server.url) as http:
        with Client(http=http) as sd:
            sd.list_layers(limit=1)
        assert not http.is_closed
        assert http.get("/healthz").status_code == 200


# -- the retry policy, pure ----------------------------------------------------------------


def test_the_policy_backs_off_and_honours_retry_after() -> None:
    policy = RetryPolicy(attempts=5, backoff=0.5, max_backoff=1.5, max_retry_after=10, jitter=False)
    broken = ConnectionFailed("reset")
    assert [policy.delay(n, broken, True) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 1.5, 1.5, None]
    assert policy.delay(1, broken, False) is None  # a POST that may have been received
    assert policy.delay(1, NotConnected("refused"), False) == 0.5  # nothing was sent
    busy = StoreUnavailable(503, "store_unavailable", "down", retry_after=7)
    assert policy.delay(1, busy, True) == 7
    assert policy.delay(1, StoreUnavailable(503, "x", "down", retry_after=11), True) is None
    assert policy.delay(1, LayerNotFound(404, "layer_not_found", "no"), True) is None
    jittered = RetryPolicy(backoff=1.0)
    assert all(0 <= (jittered.delay(1, broken, True) or 0) <= 1.0 for _ in range(50))


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    from service.client._core import retry_after

    assert retry_after("3") == 3.0
    assert retry_after(None) is None and retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    assert 3000 < (retry_after(later) or 0) <= 3600
    assert retry_after(format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True)) == 0.0
