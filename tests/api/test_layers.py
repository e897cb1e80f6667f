"""/layers end to end, against a real server on 127.0.0.1."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.api.helpers import assert_problem, create, unique


def test_create_answers_201_with_location_and_the_resolved_spec(client: httpx.Client) -> None:
    name = unique()
    response = client.post("/layers", json={"rate": 0.25, "name": name, "seed": 3})
    assert response.status_code == 201
    body = response.json()
    assert response.headers["location"] == f"/layers/{body['id']}"
    assert body["name"] == name
    assert body["kind"] == "spatial_dropout_2d"
    assert body["data_format"] == "channels_last"  # null resolved at creation
    assert body["rate"] == 0.25
    assert body["seed"] == 3
    assert body["weights"] == []
    assert body["trainable"] is True
    assert body["created_at"]
    assert client.get(response.headers["location"]).json() == body


def test_every_argument_of_r_keras_and_keras3_is_accepted(client: httpx.Client) -> None:
    body = create(
        client,
        kind="spatial_dropout_3d",
        rate=0.1,
        data_format="CHANNELS_FIRST",
        batch_size=4,
        trainable=False,
        weights=[],
        seed=11,
        dtype="float64",
    )
    assert body["data_format"] == "channels_first"
    assert (body["batch_size"], body["trainable"], body["dtype"]) == (4, False, "float64")
    dropout = create(client, kind="dropout", rate=0.3, noise_shape=[None, 1, 5])
    assert dropout["noise_shape"] == [None, 1, 5]
    assert dropout["data_format"] is None


def test_names_are_generated_keras_style(client: httpx.Client) -> None:
    kind = "spatial_dropout_1d"
    names = [
        client.post("/layers", json={"kind": kind, "rate": 0.1}).json()["name"] for _ in range(3)
    ]
    assert names[0].startswith("spatial_dropout1d")
    base = "spatial_dropout1d"
    suffixes = [0 if n == base else int(n.rsplit("_", 1)[1]) for n in names]
    assert suffixes == sorted(suffixes) and len(set(suffixes)) == 3


@pytest.mark.parametrize(
    ("config", "kind", "data_format"),
    [
        (
            {
                "module": "keras.layers",
                "class_name": "SpatialDropout2D",
                "config": {
                    "rate": 0.5,
                    "data_format": "channels_first",
                    "seed": 1,
                    "dtype": {
                        "module": "keras",
                        "class_name": "DTypePolicy",
                        "config": {"name": "float32"},
                        "registered_name": None,
                    },
                },
                "registered_name": None,
            },
            "spatial_dropout_2d",
            "channels_first",
        ),
        (
            {
                "class_name": "SpatialDropout1D",
                "config": {
                    "trainable": True,
                    "dtype": "float32",
                    "rate": 0.2,
                    "noise_shape": None,
                    "seed": None,
                },
            },
            "spatial_dropout_1d",
            "channels_last",
        ),
        (
            {
                "class_name": "SpatialDropout3D",
                "config": {"rate": 0.2, "batch_input_shape": [8, 4, 4, 4, 3]},
            },
            "spatial_dropout_3d",
            "channels_last",
        ),
        (
            {"class_name": "Dropout", "config": {"rate": 0.2, "noise_shape": [None, 1]}},
            "dropout",
            None,
        ),
    ],
)
def test_keras_configs_are_accepted(
    client: httpx.Client, config: dict[str, object], kind: str, data_format: str | None
) -> None:
    config["config"]["name"] = unique()  # type: ignore[index]
    response = client.post("/layers", json=config)
    assert response.status_code == 201, response.text
    assert response.json()["kind"] == kind
    assert response.json()["data_format"] == data_format


def test_keras_form_round_trips_the_keras3_arguments(client: httpx.Client) -> None:
    layer = create(client, rate=0.4, seed=9, data_format="channels_first")
    keras = client.get(f"/layers/{layer['name']}/keras").json()
    assert keras == {
        "module": "keras.layers",
        "class_name": "SpatialDropout2D",
        "config": {
            "name": layer["name"],
            "rate": 0.4,
            "seed": 9,
            "dtype": "float32",
            "data_format": "channels_first",
        },
        "registered_name": None,
    }
    # And the Keras form is itself accepted back (under a new name).
    keras["config"]["name"] = unique()
    again = client.post("/layers", json=keras)
    assert again.status_code == 201
    assert again.json()["data_format"] == "channels_first"


def test_read_by_id_and_by_name_then_delete(client: httpx.Client) -> None:
    layer = create(client)
    assert client.get(f"/layers/{layer['id']}").json() == layer
    assert client.get(f"/layers/{layer['name']}").json() == layer
    assert client.delete(f"/layers/{layer['name']}").status_code == 204
    assert_problem(client.get(f"/layers/{layer['id']}"), 404, "layer_not_found")
    assert_problem(client.delete(f"/layers/{layer['id']}"), 404, "layer_not_found")


def test_list_pages_through_every_layer_once(client: httpx.Client) -> None:
    made = {create(client)["id"] for _ in range(5)}
    seen: list[str] = []
    url: str | None = "/layers?limit=2"
    while url:
        page = client.get(url).json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        url = f"/layers?limit=2&cursor={page['next_cursor']}" if page["next_cursor"] else None
    assert made <= set(seen)
    assert len(seen) == len(set(seen))


def test_concurrent_creates_of_one_name_give_one_201(client: httpx.Client) -> None:
    name = unique("race")

    def attempt(_: int) -> int:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as c:
            return c.post("/layers", json={"rate": 0.5, "name": name}).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(attempt, range(32)))
    assert statuses.count(201) == 1
    assert statuses.count(409) == 31


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"rate": 1.5}, 422, "invalid_rate"),
        ({"rate": -0.1}, 422, "invalid_rate"),
        ({"rate": 0.5, "data_format": "nhwc"}, 422, "invalid_data_format"),
        (
            {"rate": 0.5, "kind": "spatial_dropout_1d", "data_format": "channels_first"},
            422,
            "invalid_data_format",
        ),
        ({"rate": 0.5, "weights": [[1.0]]}, 422, "weights_not_supported"),
        ({"rate": 0.5, "name": "a/b"}, 422, "invalid_name"),
        ({"rate": 0.5, "name": "bad\u0000name"}, 422, "invalid_name"),
        ({"rate": 0.5, "name": "0123456789abcdef0123456789abcdef"}, 422, "invalid_name"),
        ({"rate": 0.5, "noise_shape": [None, 1, 1, 3]}, 422, "invalid_spec"),
        ({"rate": 0.5, "dtype": "int8"}, 422, "invalid_spec"),
        ({"rate": "0.5"}, 422, "validation_error"),
        ({"rate": 0.5, "kind": "conv2d"}, 422, "validation_error"),
        ({"rate": 0.5, "batch_size": 0}, 422, "validation_error"),
        ({"rate": 0.5, "seed": -1}, 422, "validation_error"),
        ({"rate": 0.5, "unknown": 1}, 422, "validation_error"),
        ({}, 422, "validation_error"),
        ({"class_name": "Conv2D", "config": {}}, 422, "validation_error"),
        (
            {"class_name": "SpatialDropout2D", "config": {"rate": 0.5, "filters": 3}},
            422,
            "invalid_spec",
        ),
        ({"class_name": "SpatialDropout2D", "config": {"rate": 2}}, 422, "invalid_rate"),
    ],
)
def test_bad_specs_get_a_problem_with_a_stable_code(
    client: httpx.Client, body: dict[str, object], status: int, code: str
) -> None:
    before = client.get("/layers?limit=1000").json()["items"]
    assert_problem(client.post("/layers", json=body), status, code)
    assert client.get("/layers?limit=1000").json()["items"] == before  # nothing changed


def test_rate_message_is_keras3s(client: httpx.Client) -> None:
    problem = assert_problem(client.post("/layers", json={"rate": 1.5}), 422, "invalid_rate")
    assert problem["detail"] == (
        "Invalid value received for argument `rate`. Expected a float value between 0 and 1. "
        "Received: rate=1.5"
    )


def test_name_taken_is_409(client: httpx.Client) -> None:
    layer = create(client)
    assert_problem(
        client.post("/layers", json={"rate": 0.1, "name": layer["name"]}), 409, "name_conflict"
    )


def test_unicode_names_work_in_urls(client: httpx.Client) -> None:
    layer = create(client, name=unique("ünï-名前"))
    assert client.get(f"/layers/{layer['name']}").json()["id"] == layer["id"]


def test_malformed_json_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/layers", content=b'{"rate": ', headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "invalid_json")


def test_wrong_content_type_is_415(client: httpx.Client) -> None:
    response = client.post("/layers", content=b"rate=0.5", headers={"content-type": "text/plain"})
    assert_problem(response, 415, "unsupported_media_type")


def test_unacceptable_accept_is_406(client: httpx.Client) -> None:
    assert_problem(client.get("/layers", headers={"accept": "text/html"}), 406, "not_acceptable")
    assert client.get("/layers", headers={"accept": "text/html, */*;q=0.1"}).status_code == 200


def test_bad_cursor_and_limit(client: httpx.Client) -> None:
    assert_problem(client.get("/layers?cursor=abc"), 422, "invalid_cursor")
    assert_problem(client.get("/layers?limit=0"), 422, "validation_error")


def test_unknown_route_and_method_are_problems(client: httpx.Client) -> None:
    assert_problem(client.get("/nope"), 404, "not_found")
    assert_problem(client.put("/layers"), 405, "method_not_allowed")
