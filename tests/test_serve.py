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

from luna_core.settings import LunaHome
from tests.services import Service, free_port

LUNA = str(Path(sys.executable).with_name("luna"))


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_models, sample_library_master) -> LunaHome:
    """A home with the sample library embedded, indexed, and a projector registered as @champion."""
    from luna_core.index.build import update_index
    from luna_core.ingest import IngestOptions, ingest
    from luna_core.library import build_library
    from luna_core.models.profiles import resolve_profile
    from luna_core.projector.models import ProjectorConfig
    from luna_core.projector.promotion import register
    from luna_core.projector.registry import Registry
    from luna_core.projector.train import TrainSettings, train_projector, validation_scorer
    from luna_core.vault.embed import EmbedOptions, embed_images, embed_prompts

    base = tmp_path_factory.mktemp("serve")
    library = base / "library"
    shutil.copytree(sample_library_master.root, library, symlinks=True)
    luna_home = LunaHome.resolve(base / "home").ensure()
    shutil.copytree(tiny_models, luna_home.models_dir / "tiny")
    luna_home.add_roots([library])
    luna_home.set_model_profile("tiny")
    profile = resolve_profile("tiny", luna_home.models_dir)
    ingest(luna_home.catalog_path, [str(library)], IngestOptions(workers=1, progress=False))
    embed_images(luna_home, profile, EmbedOptions(progress=False))
    embed_prompts(luna_home, profile, EmbedOptions(progress=False))
    build_library(luna_home, profile)
    update_index(luna_home, profile)
    settings = TrainSettings(epochs=1, min_train_pairs=8, min_val_pairs=2, batch_size=8, progress=False)
    result = train_projector(luna_home, profile, ProjectorConfig(arch="linear", rank=8), settings)
    register(Registry(luna_home), result, profile, validation_scorer(luna_home, profile))
    return luna_home


@pytest.fixture(scope="module")
def server(home):
    port = free_port()
    service = Service("luna serve", [LUNA, "serve", "--home", str(home.root), "--port", str(port)],
                      ready="Uvicorn running on")
    try:
        service.wait_ready(180)
        service.wait_listening(port, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        service.stop()


@pytest.fixture(scope="module")
def picture(home) -> Path:
    with __import__("duckdb").connect(str(home.catalog_path), read_only=True) as con:
        (path,) = con.execute("SELECT path FROM library WHERE path LIKE '%.png' ORDER BY image_id LIMIT 1").fetchone()
    return Path(path)


def _post(url: str, path: str, body: bytes, params: list[tuple[str, str]] = ()) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{url}{path}?{urllib.parse.urlencode(list(params))}", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _tensors(data: bytes) -> dict:
    from safetensors.numpy import load

    return load(data)


def test_the_service_answers_what_the_core_answers(home, server, picture):
    from luna_core.boxes import Box
    from luna_core.models.profiles import resolve_profile
    from luna_core.query import Vault

    with urllib.request.urlopen(server + "/health", timeout=60) as response:
        health = json.loads(response.read())
    assert health["index_version"] == 1 and health["projector"]["version"] == "1" and health["profile"] == "tiny"

    vault = Vault(home, resolve_profile("tiny", home.models_dir))
    expected = vault.condition(picture, Box(0, 0, 48, 48), k=3)
    status, data = _post(server, "/condition", picture.read_bytes(), [("k", "3"), ("box", "0,0,48,48")])
    assert status == 200
    answer = _tensors(data)
    np.testing.assert_allclose(answer["prompt_embeds"], expected.prompt_embeds, atol=1e-5)
    np.testing.assert_allclose(answer["negative_pooled_prompt_embeds"], expected.negative_pooled_prompt_embeds, atol=1e-5)

    boxes = [("box", f"{x},{y},32,32") for x in (0, 32, 64) for y in (0, 32, 64)]
    status, data = _post(server, "/condition", picture.read_bytes(), boxes)
    batch = _tensors(data)["prompt_embeds"]
    assert status == 200 and batch.shape[0] == 9 and batch.shape[1] % 77 == 0  # every chunk of the answers
    assert len({batch[i].tobytes() for i in range(9)}) > 1, "each crop has its own answer"

    status, data = _post(server, "/search", picture.read_bytes(), [("k", "3")])
    assert [n["path"] for n in json.loads(data)] == [n.path for n in vault.search(picture, k=3)]
    status, data = _post(server, "/condition", picture.read_bytes(), [("source", "projector"), ("format", "json")])
    info = json.loads(data)
    assert status == 200 and info["source"] == "projector" and info["projector_version"] == "1"


def test_the_cli_asks_the_service_when_given_one(home, server, picture, tmp_path, capsys):
    from luna_cli.main import main
    from luna_core.models.profiles import resolve_profile
    from luna_core.query import Vault

    out = tmp_path / "c.safetensors"
    assert main(["condition", str(picture), "--server", server, "--k", "3", "--out", str(out)]) == 0
    expected = Vault(home, resolve_profile("tiny", home.models_dir)).condition(picture, k=3)
    np.testing.assert_allclose(_tensors(out.read_bytes())["prompt_embeds"], expected.prompt_embeds, atol=1e-5)
    capsys.readouterr()
    assert main(["search", str(picture), "--server", server, "--k", "2", "--json"]) == 0
    assert [n["path"] for n in json.loads(capsys.readouterr().out)] == [n.path for n in Vault(
        home, resolve_profile("tiny", home.models_dir)).search(picture, k=2)]
    assert main(["condition", str(picture), "--server", server, "--k", "0", "--out", str(out)]) == 2
    assert "k must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("body, params, needle", [
    (b"garbage", [], "not an image Luna can decode"),
    (None, [("k", "0")], "k must be at least 1"),
    (None, [("k", "lots")], "k: "),
    (None, [("box", "0,0,9999,10")], "lies outside"),
    (None, [("source", "oracle")], "not one of vault, projector"),
    (b"", [], "has no image"),
])
def test_a_bad_request_is_one_json_error(server, picture, body, params, needle):
    status, data = _post(server, "/condition", picture.read_bytes() if body is None else body, params)
    answer = json.loads(data)
    assert 400 <= status < 500 and needle in answer["error"], answer
    assert "Traceback" not in data.decode()


def test_a_picture_over_the_pixel_bound_is_refused_before_decoding(server):
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", 12_000, 12_000, 8, 2, 0, 0, 0)  # 144 MP declared in a few bytes
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    status, data = _post(server, "/condition", png)
    assert status == 400 and "MP bound" in json.loads(data)["error"]


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


def test_the_nodes_follow_comfyui_s_contract():
    import comfyui_luna

    assert set(comfyui_luna.NODE_CLASS_MAPPINGS) == set(comfyui_luna.NODE_DISPLAY_NAME_MAPPINGS)
    for cls in comfyui_luna.NODE_CLASS_MAPPINGS.values():
        inputs = cls.INPUT_TYPES()
        assert set(inputs) <= {"required", "optional", "hidden"} and inputs["required"]
        assert isinstance(cls.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in cls.RETURN_TYPES)
        assert callable(getattr(cls(), cls.FUNCTION)) and cls.CATEGORY == "Luna"
        for spec in [*inputs["required"].values(), *inputs.get("optional", {}).values()]:
            assert isinstance(spec, tuple) and (isinstance(spec[0], str) or isinstance(spec[0], list))


def test_each_crop_of_a_batch_gets_its_own_conditioning_in_comfyui_s_format(home, picture, server):
    import torch

    from comfyui_luna.nodes import LunaBlend, LunaProjectorConditioning, LunaVaultConditioning

    images = _image_batch(picture)
    positive, negative = LunaVaultConditioning().condition(images, k=3, home=str(home.root))
    (tokens, extra), = positive
    assert tokens.dtype == torch.float32 and tokens.shape[0] == 3 and tokens.shape[1] % 77 == 0
    assert extra["pooled_output"].shape[0] == 3 and negative[0][0].shape == tokens.shape
    assert len({tokens[i].numpy().tobytes() for i in range(3)}) == 3, "crop i has its own answer"

    mask = torch.zeros((3, 96, 96))
    mask[:, 10:50, 20:70] = 1.0
    masked, _ = LunaVaultConditioning().condition(images, k=3, mask=mask, home=str(home.root))
    assert not torch.equal(masked[0][0], tokens), "the box around the mask is what is answered"
    served, _ = LunaVaultConditioning().condition(images, k=3, mask=mask, server_url=server)
    assert torch.allclose(served[0][0], masked[0][0], atol=1e-4), "the service answers as the Python API does"

    projected, _ = LunaProjectorConditioning().condition(images, home=str(home.root))
    assert projected[0][0].shape == tokens.shape

    typed = [[tokens[:1] * 0 + 1.0, {"pooled_output": extra["pooled_output"][:1] * 0 + 1.0}]]
    (blended,) = LunaBlend().blend(typed, positive, alpha=0.25, mode="blend")
    assert torch.allclose(blended[0][0], 0.75 + 0.25 * tokens)
    (joined,) = LunaBlend().blend(typed, positive, mode="concat")
    assert joined[0][0].shape == (3, 77 + tokens.shape[1], tokens.shape[-1])
    assert torch.equal(joined[0][1]["pooled_output"][0],
                                                                             typed[0][1]["pooled_output"][0])


def test_io_png_round_trip_keeps_the_pixels(picture):
    from comfyui_luna.nodes import to_pictures

    images = _image_batch(picture, 1)
    (back,) = to_pictures(images)
    buffer = io.BytesIO()
    back.save(buffer, "PNG")
    restored = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype=np.float32) / 255.0
    assert np.abs(restored - images[0].numpy()).max() <= 1 / 255 + 1e-6
