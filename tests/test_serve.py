"""`luna serve` from another process, the CLI's `--server`, an index swapped under load, and the
ComfyUI nodes' contract (ComfyUI itself is not installable here: the nodes are tested against its
documented conventions, in process and through the service)."""

from __future__ import annotations

import io
import json
import shutil
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from luna_core.home.home import LunaHome
from tests.services import Service, free_port

LUNA = str(Path(sys.executable).with_name("luna"))


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_models, sample_library_master) -> LunaHome:
    """A home with the sample library embedded, indexed, and a projector registered as @champion."""
    from luna_core.catalog.library_view import build_library
    from luna_core.index.build import update_index
    from luna_core.ingest.run import IngestOptions, ingest
    from luna_core.models.profiles import resolve_profile
    from luna_core.projector.models import ProjectorConfig
    from luna_core.projector.promotion import register
    from luna_core.projector.registry import Registry
    from luna_core.projector.train import TrainSettings, train_projector, validation_scorer
    from luna_core.vault.embed import EmbedOptions, embed_images
    from luna_core.vault.embed_prompts import embed_prompts

    base = tmp_path_factory.mktemp("serve")
    library = base / "library"
    shutil.copytree(sample_library_master.root, library, symlinks=True)
    luna_home = LunaHome.resolve(base / "home").ensure()
    luna_home.add_roots([library])
    luna_home.set_model_profile("tiny")
    profile = resolve_profile("tiny", luna_home.models_dir)
    ingest(luna_home.catalog_path, [str(library)], IngestOptions(workers=1, progress=False))
    embed_images(luna_home, profile, EmbedOptions(progress=False))
    embed_prompts(luna_home, profile, EmbedOptions(progress=False))
    build_library(luna_home, profile)
    update_index(luna_home, profile)
    settings = TrainSettings(
        epochs=1, min_train_pairs=8, min_val_pairs=2, batch_size=8, progress=False
    )
    result = train_projector(luna_home, profile, ProjectorConfig(arch="linear", rank=8), settings)
    register(Registry(luna_home), result, profile, validation_scorer(luna_home, profile))
    return luna_home


@pytest.fixture(scope="module")
def server(home):
    port = free_port()
    service = Service(
        "luna serve",
        [LUNA, "serve", "--home", str(home.root), "--port", str(port)],
        ready="Uvicorn running on",
    )
    try:
        service.wait_ready(180)
        service.wait_listening(port, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        service.stop()


@pytest.fixture(scope="module")
def picture(home) -> Path:
    with __import__("duckdb").connect(str(home.catalog_path), read_only=True) as con:
        (path,) = con.execute(
            "SELECT path FROM library WHERE path LIKE '%.png' ORDER BY image_id LIMIT 1"
        ).fetchone()
    return Path(path)


def _post(
    url: str, path: str, body: bytes, params: list[tuple[str, str]] = ()
) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"{url}{path}?{urllib.parse.urlencode(list(params))}", data=body, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _tensors(data: bytes) -> dict:
    from safetensors.numpy import load

    return load(data)


def test_the_service_answers_what_the_core_answers(home, server, picture):
    from luna_core.ask.boxes import Box
    from luna_core.ask.vault_query import VaultQuery
    from luna_core.models.profiles import resolve_profile

    with urllib.request.urlopen(server + "/health", timeout=60) as response:
        health = json.loads(response.read())
    assert (
        health["index_version"] == 1
        and health["projector"]["version"] == "1"
        and health["profile"] == "tiny"
    )

    vault = VaultQuery(home, resolve_profile("tiny", home.models_dir))
    expected = vault.condition(picture, Box(0, 0, 48, 48), k=3)
    status, data = _post(
        server, "/condition", picture.read_bytes(), [("k", "3"), ("box", "0,0,48,48")]
    )
    assert status == 200
    answer = _tensors(data)
    np.testing.assert_allclose(answer["prompt_embeds"], expected.prompt_embeds, atol=1e-5)
    np.testing.assert_allclose(
        answer["negative_pooled_prompt_embeds"], expected.negative_pooled_prompt_embeds, atol=1e-5
    )

    boxes = [("box", f"{x},{y},32,32") for x in (0, 32, 64) for y in (0, 32, 64)]
    status, data = _post(server, "/condition", picture.read_bytes(), boxes)
    batch = _tensors(data)["prompt_embeds"]
    # every chunk of the answers
    assert status == 200 and batch.shape[0] == 9 and batch.shape[1] % 77 == 0
    assert len({batch[i].tobytes() for i in range(9)}) > 1, "each crop has its own answer"

    status, data = _post(server, "/search", picture.read_bytes(), [("k", "3")])
    answer = json.loads(data)
    assert [n["path"] for n in answer["results"][0]["neighbors"]] == [
        n.path for n in vault.search(picture, k=3)
    ]
    assert answer["results"][0]["box"] is None and answer["index_version"] == 1
    status, data = _post(
        server, "/condition", picture.read_bytes(), [("source", "projector"), ("format", "json")]
    )
    info = json.loads(data)
    assert status == 200 and info["source"] == "projector" and info["projector_version"] == "1"


def test_the_cli_asks_the_service_when_given_one(home, server, picture, tmp_path, capsys):
    from luna_cli.main import main
    from luna_core.ask.vault_query import VaultQuery
    from luna_core.models.profiles import resolve_profile

    out = tmp_path / "c.safetensors"
    assert main(["condition", str(picture), "--server", server, "--k", "3", "--out", str(out)]) == 0
    expected = VaultQuery(home, resolve_profile("tiny", home.models_dir)).condition(picture, k=3)
    np.testing.assert_allclose(
        _tensors(out.read_bytes())["prompt_embeds"], expected.prompt_embeds, atol=1e-5
    )
    capsys.readouterr()
    assert main(["search", str(picture), "--server", server, "--k", "2", "--json"]) == 0
    assert [n["path"] for n in json.loads(capsys.readouterr().out)] == [
        n.path
        for n in VaultQuery(home, resolve_profile("tiny", home.models_dir)).search(picture, k=2)
    ]
    assert main(["condition", str(picture), "--server", server, "--k", "0", "--out", str(out)]) == 2
    assert "k must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "body, params, needle",
    [
        (b"garbage", [], "not an image Luna can decode"),
        (None, [("k", "0")], "k must be at least 1"),
        (None, [("k", "lots")], "k: "),
        (None, [("box", "0,0,9999,10")], "lies outside"),
        (None, [("source", "oracle")], "not one of vault, projector"),
        (b"", [], "has no image"),
    ],
)
def test_a_bad_request_is_one_json_error(server, picture, body, params, needle):
    status, data = _post(
        server, "/condition", picture.read_bytes() if body is None else body, params
    )
    answer = json.loads(data)
    assert 400 <= status < 500 and needle in answer["error"], answer
    assert "Traceback" not in data.decode()


def test_a_picture_over_the_pixel_bound_is_refused_before_decoding(server):
    import struct
    import zlib

    # 144 MP declared in a few bytes
    header = struct.pack(">IIBBBBB", 12_000, 12_000, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    status, data = _post(server, "/condition", png)
    assert status == 413 and "MP bound" in json.loads(data)["error"]


def test_an_index_rebuilt_while_a_client_queries_is_swapped_without_an_error(home, server, picture):
    from luna_core.index.build import update_index
    from luna_core.models.profiles import resolve_profile

    profile = resolve_profile("tiny", home.models_dir)
    body = picture.read_bytes()
    seen: list[tuple[int, int | None]] = []
    answered = threading.Event()
    stop = threading.Event()

    def client():
        while not stop.is_set():
            status, data = _post(server, "/condition", body, [("format", "json"), ("k", "3")])
            seen.append((status, json.loads(data).get("index_version")))
            answered.set()

    thread = threading.Thread(target=client)
    thread.start()
    try:
        assert answered.wait(60)
        before = len(seen)
        for _ in range(2):
            update_index(home, profile, rebuild=True)
        newest = update_index(home, profile).version
        with urllib.request.urlopen(server + "/health", timeout=60) as response:
            assert json.loads(response.read())["index_version"] == newest
        answered.clear()
        assert answered.wait(60)  # at least one more answer after the swap
    finally:
        stop.set()
        thread.join(120)
    assert len(seen) > before and all(status == 200 for status, _ in seen), seen
    versions = [v for _, v in seen]
    assert versions == sorted(versions) and versions[-1] == newest, "old, then new; never back"


# ---------------------------------------------------------------- ComfyUI nodes


def _image_batch(picture: Path, n: int = 3):
    import torch

    base = np.asarray(Image.open(picture).convert("RGB").resize((96, 96)), dtype=np.float32) / 255.0
    items = [np.roll(base, shift=24 * i, axis=1) for i in range(n)]  # different content per item
    return torch.from_numpy(np.stack(items))


def test_the_nodes_follow_comfyui_s_contract(monkeypatch):
    import comfyui_luna
    from tests import comfy_double

    comfy_double.install(monkeypatch)  # the graph refiners list ComfyUI's samplers

    assert set(comfyui_luna.NODE_CLASS_MAPPINGS) == set(comfyui_luna.NODE_DISPLAY_NAME_MAPPINGS)
    for cls in comfyui_luna.NODE_CLASS_MAPPINGS.values():
        inputs = cls.INPUT_TYPES()
        assert set(inputs) <= {"required", "optional", "hidden"} and inputs["required"]
        assert isinstance(cls.RETURN_TYPES, tuple) and all(
            isinstance(t, str) for t in cls.RETURN_TYPES
        )
        assert callable(getattr(cls(), cls.FUNCTION)) and cls.CATEGORY == "Luna"
        for spec in [*inputs["required"].values(), *inputs.get("optional", {}).values()]:
            assert isinstance(spec, tuple) and (
                isinstance(spec[0], str) or isinstance(spec[0], list)
            )


def test_each_crop_of_a_batch_gets_its_own_conditioning_in_comfyui_s_format(home, picture, server):
    import torch

    from comfyui_luna.inputs import widget_defaults
    from comfyui_luna.vault_nodes import LunaBlend, LunaProjectorConditioning, LunaVaultConditioning

    # as ComfyUI's page fills every widget in
    vault_widgets = {**widget_defaults(LunaVaultConditioning), "k": 3}
    projector_widgets = widget_defaults(LunaProjectorConditioning)
    images = _image_batch(picture)
    positive, negative = LunaVaultConditioning().condition(
        images, **vault_widgets, home=str(home.root)
    )
    ((tokens, extra),) = positive
    assert tokens.dtype == torch.float32 and tokens.shape[0] == 3 and tokens.shape[1] % 77 == 0
    assert extra["pooled_output"].shape[0] == 3 and negative[0][0].shape == tokens.shape
    assert len({tokens[i].numpy().tobytes() for i in range(3)}) == 3, "crop i has its own answer"

    mask = torch.zeros((3, 96, 96))
    mask[:, 10:50, 20:70] = 1.0
    masked, _ = LunaVaultConditioning().condition(
        images, **vault_widgets, mask=mask, home=str(home.root)
    )
    assert not torch.equal(masked[0][0], tokens), "the box around the mask is what is answered"
    served, _ = LunaVaultConditioning().condition(
        images, **vault_widgets, mask=mask, server_url=server
    )
    assert torch.allclose(served[0][0], masked[0][0], atol=1e-4), (
        "the service answers as the Python API does"
    )

    projected, _ = LunaProjectorConditioning().condition(
        images, **projector_widgets, home=str(home.root)
    )
    # The projector predicts one chunk; the vault answers every chunk its neighbours' prompts have.
    assert projected[0][0].shape == (3, 77, tokens.shape[2])

    typed = [[tokens[:1] * 0 + 1.0, {"pooled_output": extra["pooled_output"][:1] * 0 + 1.0}]]
    (blended,) = LunaBlend().blend(typed, positive, alpha=0.25, mode="blend")
    assert torch.allclose(blended[0][0], 0.75 + 0.25 * tokens)
    (joined,) = LunaBlend().blend(typed, positive, alpha=0.5, mode="concat")
    # typed (as long as the answer) + answer
    assert joined[0][0].shape == (
        3,
        2 * tokens.shape[1],
        tokens.shape[-1],
    )
    assert torch.equal(joined[0][1]["pooled_output"][0], typed[0][1]["pooled_output"][0])


def test_io_png_round_trip_keeps_the_pixels(picture):
    from comfyui_luna.comfy_types import to_pictures

    images = _image_batch(picture, 1)
    (back,) = to_pictures(images)
    buffer = io.BytesIO()
    back.save(buffer, "PNG")
    restored = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype=np.float32) / 255.0
    assert np.abs(restored - images[0].numpy()).max() <= 1 / 255 + 1e-6


# ---------------------------------------------------------------- the search page and its API

ARTIFACTS = Path(
    __import__("os").environ.get("LUNA_TEST_ARTIFACTS")
    or Path(__file__).resolve().parents[1] / "test-artifacts"
)


def _get(url: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def _neighbors(data: bytes, box: int = 0) -> list[dict]:
    return json.loads(data)["results"][box]["neighbors"]


def test_the_page_and_its_assets_come_from_the_service_alone(server):
    status, page, headers = _get(server + "/")
    assert status == 200 and b'src="/static/app.js"' in page
    assert (
        "script-src 'self'" in headers["content-security-policy"]
        and "frame-ancestors 'none'" in headers["content-security-policy"]
    )
    static = Path(__file__).resolve().parents[1] / "luna_service" / "static"
    for name in ("app.js", "app.css", "logo.svg"):
        status, body, _ = _get(f"{server}/static/{name}")
        assert status == 200 and body == (static / name).read_bytes()
    for path in static.iterdir():  # no CDN, no font service: nothing loads from outside the machine
        text = path.read_text()
        assert "https://" not in text and "http://" not in text.replace(
            "http://www.w3.org/2000/svg", ""
        ), path
    assert _get(server + "/static/..%2fapp.py")[0] == 404


def test_search_answers_one_shape_with_details_filters_and_a_mixed_prompt(home, server, picture):
    body = picture.read_bytes()
    status, data = _post(
        server, "/search", body, [("k", "4"), ("box", "0,0,48,48"), ("box", "16,16,64,64")]
    )
    answer = json.loads(data)
    assert status == 200 and [r["box"] for r in answer["results"]] == [
        [0, 0, 48, 48],
        [16, 16, 64, 64],
    ]
    first = answer["results"][0]
    assert len(first["neighbors"]) == 4 and first["mixed_prompt"]
    assert {
        "model",
        "loras",
        "sampler",
        "seed",
        "generator",
        "path",
        "modified",
        "similarity",
    } <= set(first["neighbors"][0])
    # The same picture named by library path, by content hash, or sent as a multipart form: the same
    # answer.
    same = [
        _neighbors(_post(server, "/search", b"", [("k", "4"), ("path", str(picture))])[1]),
        _neighbors(
            _post(
                server,
                "/search",
                b"",
                [("k", "4"), ("hash", first["neighbors"][0]["content_hash"])],
            )[1]
        ),
    ]
    plain = _neighbors(_post(server, "/search", body, [("k", "4")])[1])
    assert same[0] == plain
    boundary = "luna-test-boundary"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + body
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{server}/search?k=4",
        data=form,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert _neighbors(response.read()) == plain
    # Filters narrow the neighbours by catalog fields.
    generator = plain[1]["generator"]
    filtered = _neighbors(_post(server, "/search", body, [("k", "3"), ("generator", generator)])[1])
    assert filtered and all(n["generator"] == generator for n in filtered)
    lora = (
        next(n["loras"][0]["name"] for n in plain + same[1] if n["loras"])
        if any(n["loras"] for n in plain + same[1])
        else "detail_tweaker_xl"
    )
    assert all(
        any(lora in x["name"] for x in n["loras"])
        for n in _neighbors(_post(server, "/search", body, [("k", "3"), ("lora", lora)])[1])
    )
    status, data = _post(server, "/search", body, [("after", "2999-01-01")])
    assert status == 422 and "matches the filters" in json.loads(data)["error"]


@pytest.mark.parametrize(
    "body, params, status, needle",
    [
        (b"not an image at all", [], 415, "not an image"),
        (None, [("box", "0,0,9999,10")], 422, "lies outside"),
        (None, [("box", "one,two")], 422, "X,Y,W,H"),
        (None, [("k", "0")], 422, "k must be at least 1"),
        (None, [("k", "100000")], 422, "over the service's bound"),
        (None, [("after", "yesterday")], 422, "not a date"),
        (b"", [], 422, "has no image"),
    ],
)
def test_search_mistakes_get_their_status_and_a_sentence(
    server, picture, body, params, status, needle
):
    got, data = _post(server, "/search", picture.read_bytes() if body is None else body, params)
    assert got == status and needle in json.loads(data)["error"]


def test_a_body_over_the_cap_is_413_and_the_service_goes_on(server, picture):
    import http.client

    from luna_service.app import MAX_BODY_BYTES

    address = urllib.parse.urlsplit(server)
    declared = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    declared.putrequest("POST", "/search")
    # refused from the header, before the body
    declared.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    declared.endheaders(b"\0" * 1024)
    answer = declared.getresponse()
    assert answer.status == 413 and "byte bound" in json.loads(answer.read())["error"]

    def stream():  # no length said: counted while it arrives
        for _ in range(MAX_BODY_BYTES // (1 << 20) + 1):
            yield b"\0" * (1 << 20)

    streamed = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    streamed.request("POST", "/search", body=stream(), encode_chunked=True)
    answer = streamed.getresponse()
    assert answer.status == 413 and "byte bound" in json.loads(answer.read())["error"]
    assert _post(server, "/search", picture.read_bytes(), [("k", "1")])[0] == 200


def test_no_path_outside_the_library_roots_is_ever_served(home, server, tmp_path):
    root = Path(home.roots()[0])
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    link = root / "link_out.png"
    link.symlink_to(outside)
    folder = root / "a_folder.png"
    folder.mkdir()
    try:
        forms = [
            str(outside),
            f"{root}/../{outside.name}",
            f"{root}/../../{outside.relative_to('/')}",
            "secret.png",
            str(link),
            str(folder),
            str(home.catalog_path),
            "/etc/passwd",
            f"{root}/x\x00.png",
            f"{root}/%2e%2e/{outside.name}",
        ]
        for form in forms:
            for endpoint in ("/library/file", "/library/thumbnail"):
                status, data, _ = _get(
                    f"{server}{endpoint}?{urllib.parse.urlencode({'path': form})}"
                )
                assert status == 403, (endpoint, form, status)
            status, _ = _post(server, "/search", b"", [("path", form)])
            assert status == 403, ("/search", form, status)
        assert _get(f"{server}/library/file?hash={'0' * 64}")[0] == 403
    finally:
        link.unlink()
        folder.rmdir()


def test_thumbnails_are_made_once_and_follow_the_file(home, server, picture):
    root = Path(home.roots()[0])
    copy = root / "thumbnail_probe.png"
    Image.new("RGB", (300, 200), (200, 30, 30)).save(copy)
    try:
        url = f"{server}/library/thumbnail?{urllib.parse.urlencode({'path': str(copy)})}"
        status, first, headers = _get(url)
        assert status == 200 and headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(first)).size == (256, 171)
        made = sorted(home.thumbnails_dir.rglob("*.jpg"))
        assert _get(url)[1] == first and sorted(home.thumbnails_dir.rglob("*.jpg")) == made, (
            "served from the cache"
        )
        Image.new("RGB", (300, 200), (30, 30, 200)).save(copy)  # the file changes: a new thumbnail
        status, second, _ = _get(url)
        assert status == 200 and second != first
        red, blue = (
            Image.open(io.BytesIO(b)).convert("RGB").getpixel((5, 5)) for b in (first, second)
        )
        assert red[0] > red[2] and blue[2] > blue[0]
    finally:
        copy.unlink()


def test_text_search_pages_through_the_catalog(server):
    status, data, _ = _get(f"{server}/library/search?q=a&per_page=5&page=1")
    page1 = json.loads(data)
    page2 = json.loads(_get(f"{server}/library/search?q=a&per_page=5&page=2")[1])
    assert status == 200 and page1["total"] > 5 and len(page1["items"]) == 5
    assert not {i["content_hash"] for i in page1["items"]} & {
        i["content_hash"] for i in page2["items"]
    }
    narrow = json.loads(_get(f"{server}/library/search?q=a&generator=ComfyUI&per_page=200")[1])
    assert narrow["total"] < page1["total"] and all(
        i["generator"] == "ComfyUI" for i in narrow["items"]
    )
    assert _get(f"{server}/library/search?q=a&per_page=0")[0] == 422
    facets = json.loads(_get(f"{server}/library/facets")[1])
    assert "ComfyUI" in facets["generators"] and facets["models"]


def test_health_answers_while_the_workers_are_busy(server, picture):
    """Eight requests for 64 crops each are sent whole first; /health, sent after them, must come
    back before the last of them has (the work is on worker threads, not on the event loop, which
    answers health at once; a service that searched on its event loop, or under one lock, answers
    health after them all)."""
    import http.client

    body = picture.read_bytes()
    width, height = Image.open(picture).size
    side = min(width, height) // 8
    boxes = [("box", f"{x * side},{y * side},{side},{side}") for x in range(8) for y in range(8)]
    address = urllib.parse.urlsplit(server)
    searches = []
    for _ in range(8):
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=300)
        connection.request(
            "POST", f"/condition?{urllib.parse.urlencode(boxes + [('k', '20')])}", body=body
        )
        searches.append(connection)
    health = http.client.HTTPConnection(address.hostname, address.port, timeout=300)
    health.request("GET", "/health")
    answer = health.getresponse()
    assert answer.status == 200 and json.loads(answer.read())["status"] == "ok"
    ready = [
        c.sock is not None and __import__("select").select([c.sock], [], [], 0)[0] for c in searches
    ]
    assert sum(map(bool, ready)) < len(searches), "health waited behind every search"
    for connection in searches:
        response = connection.getresponse()
        assert response.status == 200 and response.read()


def test_a_person_searches_a_box_filters_and_takes_the_conditioning_in_a_browser(server, picture):
    """Headless Chromium on the page: upload, draw a box with the mouse, see k results with their
    prompts, apply a filter, and take a .safetensors that loads with its four tensors.
    Screenshots are kept."""
    import base64

    from tests.services import Chromium

    browser = Chromium()
    try:
        page = browser.open(server + "/")
        browser.wait_for_text(page, ["Query image", "index v"])
        root = browser.call("DOM.getDocument", page)["root"]["nodeId"]
        file_input = browser.call("DOM.querySelector", page, nodeId=root, selector="#file")[
            "nodeId"
        ]
        browser.call("DOM.setFileInputFiles", page, nodeId=file_input, files=[str(picture)])
        shown = browser.call(
            "Runtime.evaluate",
            page,
            awaitPromise=True,
            returnByValue=True,
            expression="""
            new Promise((resolve) => {
              const picture = document.getElementById('picture');
              const ready = () =>
                !document.getElementById('stage').hidden && picture.naturalWidth > 0;
              if (ready()) { resolve(true); return; }
              picture.addEventListener(
                'load', () => requestAnimationFrame(() => resolve(ready())), {once: true});
            })""",
        )
        assert shown["result"]["value"] is True
        rect = json.loads(
            browser.call(
                "Runtime.evaluate",
                page,
                returnByValue=True,
                expression=(
                    "JSON.stringify(document.getElementById('picture').getBoundingClientRect())"
                ),
            )["result"]["value"]
        )
        start = (rect["x"] + rect["width"] * 0.1, rect["y"] + rect["height"] * 0.1)
        end = (rect["x"] + rect["width"] * 0.6, rect["y"] + rect["height"] * 0.6)
        for kind, (x, y) in (("mousePressed", start), ("mouseMoved", end), ("mouseReleased", end)):
            browser.call(
                "Input.dispatchMouseEvent", page, type=kind, x=x, y=y, button="left", clickCount=1
            )
        boxes = browser.call(
            "Runtime.evaluate", page, returnByValue=True, expression="JSON.stringify(query.boxes)"
        )
        assert len(json.loads(boxes["result"]["value"])) == 1, "the drag drew one box"
        browser.call(
            "Runtime.evaluate",
            page,
            expression="document.getElementById('k').value = '5'; "
            "document.getElementById('search').click()",
        )
        text = browser.wait_for_text(page, ["Box 1", "similarity", "mixed prompt", "open image"])
        cards = browser.call(
            "Runtime.evaluate",
            page,
            returnByValue=True,
            expression="document.querySelectorAll('.card').length",
        )["result"]["value"]
        assert cards == 5 and "on a" in text, "five neighbours, each with its prompt"
        browser.call(
            "Runtime.evaluate",
            page,
            awaitPromise=True,
            expression="""
            Promise.all([...document.querySelectorAll('img.thumb')].map((i) => i.complete ? null
                : new Promise((r) => { i.onload = i.onerror = r; })))""",
        )
        browser.screenshot(page, ARTIFACTS / "search-page-box.png")
        # A filter: only one generator's images.
        browser.call(
            "Runtime.evaluate",
            page,
            expression="""
            const select = document.getElementById('f-generator');
            select.value = [...select.options].map((o) => o.value).find((v) => v === 'ComfyUI');
            document.getElementById('results').replaceChildren();
            document.getElementById('search').click()""",
        )
        browser.wait_for_text(page, ["Box 1", "similarity"])
        metas = browser.call(
            "Runtime.evaluate",
            page,
            returnByValue=True,
            expression=(
                "[...document.querySelectorAll('.card')].map((c) => "
                "c.querySelector('.meta').textContent)"
            ),
        )
        assert metas["result"]["value"] and all(
            m.startswith("ComfyUI") for m in metas["result"]["value"]
        )
        # The conditioning the page's download button asks for, fetched the same way.
        fetched = browser.call(
            "Runtime.evaluate",
            page,
            awaitPromise=True,
            returnByValue=True,
            expression="""
            (async () => {
              const params = queryParams({source: 'vault', format: 'safetensors'});
              const response = await fetch(
                '/condition?' + params, {method: 'POST', body: query.file});
              const bytes = new Uint8Array(await response.arrayBuffer());
              let text = ''; for (const b of bytes) text += String.fromCharCode(b);
              return {status: response.status, data: btoa(text)};
            })()""",
        )["result"]["value"]
        assert fetched["status"] == 200
        tensors = _tensors(base64.b64decode(fetched["data"]))
        assert (
            set(tensors)
            == {
                "prompt_embeds",
                "pooled_prompt_embeds",
                "negative_prompt_embeds",
                "negative_pooled_prompt_embeds",
            }
            and tensors["prompt_embeds"].shape[0] == 1
        )
        # Text search, paged.
        browser.call(
            "Runtime.evaluate",
            page,
            expression="""
            document.querySelector('.tab[data-tab="by-text"]').click();
            document.getElementById('f-generator').value = '';
            document.getElementById('q').value = 'background';
            document.querySelector('#text-form button').click()""",
        )
        browser.wait_for_text(page, ["page 1 of", "images"])
        browser.screenshot(page, ARTIFACTS / "search-page-text.png")
        assert (
            browser.call(
                "Runtime.evaluate",
                page,
                returnByValue=True,
                expression=("document.getElementById('error').hidden"),
            )["result"]["value"]
            is True
        ), "no error was shown"
    finally:
        browser.close()
    assert (ARTIFACTS / "search-page-box.png").stat().st_size > 20_000


def test_beyond_this_machine_the_service_asks_for_its_token(home, picture, tmp_path):
    """Listening on every interface needs a token; then only /health and the page answer without
    it, and a client in another process with the right token gets its answer."""
    import os
    import subprocess

    refused = subprocess.run(
        [LUNA, "serve", "--home", str(home.root), "--host", "0.0.0.0", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "LUNA_SERVE_TOKEN"},
    )
    assert refused.returncode == 2 and "set a token first (serve.token" in refused.stderr

    port = free_port()
    token = "s3cret-token/with+symbols"
    service = Service(
        "luna serve with a token",
        [LUNA, "serve", "--home", str(home.root), "--host", "0.0.0.0", "--port", str(port)],
        ready="Uvicorn running on",
        env={**os.environ, "LUNA_SERVE_TOKEN": token},
    )
    try:
        service.wait_ready(180)
        service.wait_listening(port, 30)
        url = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{url}/health", timeout=60) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"{url}/", timeout=60) as response:
            assert response.status == 200  # the page, which then asks for the token
        body = picture.read_bytes()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": "luna_token=wrong"}):
            request = urllib.request.Request(
                f"{url}/search?k=2", data=body, method="POST", headers=headers
            )
            with pytest.raises(urllib.error.HTTPError) as refused_request:
                urllib.request.urlopen(request, timeout=60)
            assert refused_request.value.code == 401
            assert refused_request.value.headers["WWW-Authenticate"] == "Bearer"
        thumbnail = urllib.request.Request(f"{url}/library/thumbnail?path={picture}")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(thumbnail, timeout=60)
        # the CLI, another process, sends the token from its environment
        answered = subprocess.run(
            [LUNA, "search", str(picture), "--server", url, "--k", "2", "--json"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "LUNA_SERVE_TOKEN": token, "LUNA_HOME": str(home.root)},
        )
        assert answered.returncode == 0, answered.stderr
        assert len(json.loads(answered.stdout)) == 2
        cookie = urllib.parse.quote(token, safe="")
        with_cookie = urllib.request.Request(
            thumbnail.full_url, headers={"Cookie": f"luna_token={cookie}"}
        )
        with urllib.request.urlopen(with_cookie, timeout=60) as response:
            assert response.headers["Content-Type"] == "image/jpeg"
    finally:
        service.stop()


def test_the_graph_refiners_neighbours_from_the_service_equal_those_in_process(
    home, server, picture
):
    """Luna Chess Refiner and Semantic Detailer with `server_url` ask `/search` for each crop's
    neighbours: the same images, weights, prompts and prompt rules as in ComfyUI's process."""
    from comfyui_luna.graph_answers import neighbours
    from luna_core.refine.options import SourceSettings

    pictures = [
        Image.open(picture).convert("RGB"),
        Image.open(picture).convert("RGB").rotate(90),
    ]
    source = SourceSettings(k=3)
    remote = neighbours(pictures, source, "", server)
    local = neighbours(pictures, source, str(home.root), "")
    assert [[n.image_id for n in r] for r in remote] == [[n.image_id for n in r] for r in local]
    for there, here in zip(remote, local):
        assert [n.prompt for n in there] == [n.prompt for n in here]
        assert [n.prompt_syntax for n in there] == [n.prompt_syntax for n in here]
        assert np.allclose([n.weight for n in there], [n.weight for n in here], atol=1e-6)
    assert all(n.prompt_syntax for r in remote for n in r)
