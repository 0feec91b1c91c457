"""What `luna serve` shares between requests: read only on change, published without races, searched
with per-call parameters."""

from __future__ import annotations

import threading

import numpy as np

from luna_core.index.build import update_index
from luna_core.index.store import IndexStore, index_store
from luna_core.models.profiles import resolve_profile


def test_the_index_pointer_is_read_only_when_it_changes(indexed_home, monkeypatch):
    import luna_service.service as service_module
    from luna_service.service import LunaService

    profile = resolve_profile("tiny", indexed_home.models_dir)
    # only the pointer's own changes count
    monkeypatch.setattr(service_module, "ALIAS_CHECK_SECONDS", 3600.0)
    service = LunaService(indexed_home, profile)
    reads = []
    original = IndexStore.current
    monkeypatch.setattr(IndexStore, "current", lambda self: reads.append(1) or original(self))
    for _ in range(50):
        service.refresh(wait=False)
    assert reads == [], "an unchanged pointer is never read again"
    newest = update_index(indexed_home, profile, rebuild=True).version
    reads.clear()  # the build's own reads
    service.refresh()
    # read (its version, then the index it names)
    assert reads and service.state.index_version == newest


def test_two_publishers_at_once_get_two_versions_and_the_pointer_the_newest(
    indexed_home, monkeypatch
):
    """Both publishers reach the point where a version's files are written at the same time, if they
    can: without the publish lock they took the same number and one failed on the rename."""
    import luna_core.index.store as store_module

    profile = resolve_profile("tiny", indexed_home.models_dir)
    meeting = threading.Barrier(2)
    write_index = store_module.faiss.write_index

    def write_together(index, path):
        try:
            # the second publisher waits on the lock instead: the barrier breaks
            meeting.wait(timeout=5)
        except threading.BrokenBarrierError:
            pass
        write_index(index, path)

    monkeypatch.setattr(store_module.faiss, "write_index", write_together)
    before = index_store(indexed_home, profile).current().number
    results, errors = [], []

    def publish():
        try:
            results.append(update_index(indexed_home, profile, rebuild=True).version)
        except Exception as exc:  # noqa: BLE001 - the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert sorted(results) == [before + 1, before + 2]
    assert index_store(indexed_home, profile).current().number == before + 2


def test_probing_every_list_is_a_parameter_of_one_call(indexed_home):
    from luna_core.index.faiss_index import IndexSettings, build_index, exact_neighbors
    from luna_core.index.reranked import index_layers, search_index

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(4000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index, _ = build_index(
        vectors, np.arange(len(vectors)), IndexSettings(flat_max_vectors=100, held_out=50)
    )
    ivf, _ = index_layers(index)
    assert ivf is not None and ivf.nlist > 1
    ivf.nprobe = 1
    queries = vectors[:20]
    exact = exact_neighbors(vectors, queries, 10)
    _, every = search_index(index, queries, 10, every_list=True)
    assert ivf.nprobe == 1, "the shared index is left as it was"
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(every, exact)]) == 1.0


def test_filters_on_the_index_lookup_agree_with_the_catalog(indexed_home):
    """The service filters neighbours on the index's memory-mapped lookup; the catalog's SQL is
    the reference."""
    from luna_core.ask import browse
    from luna_core.index.store import load_index

    profile = resolve_profile("tiny", indexed_home.models_dir)
    lookup = load_index(index_store(indexed_home, profile)).lookup
    assert browse.lookup_has_details(lookup)
    hashes = lookup.column("content_hash").to_pylist()
    lora = next(
        entry["name"] for loras in lookup.column("loras").to_pylist() for entry in (loras or [])
    )
    model = next(m for m in lookup.column("model").to_pylist() if m)
    for where in (
        browse.CatalogFilter(generator="ComfyUI"),
        browse.CatalogFilter(model=model[3:9].upper()),
        browse.CatalogFilter(lora=lora[:5]),
        browse.CatalogFilter(text="RED"),
        browse.CatalogFilter(after="2000-01-01", before="2999-12-31"),
        browse.CatalogFilter(after="2999-01-01"),
        browse.CatalogFilter(generator="ComfyUI", text="background", lora=lora[-4:]),
    ):
        mask = browse.filter_mask(lookup, where)
        from_lookup = {h for h, keep in zip(hashes, mask) if keep}
        assert from_lookup == set(browse.details(indexed_home.catalog_path, hashes, where)), where
    details = browse.lookup_details(lookup, [0, 1])
    reference = browse.details(indexed_home.catalog_path, hashes[:2])
    for row in details:
        expected = reference[row["content_hash"]]
        assert {k: row[k] for k in row} == {k: expected[k] for k in row}
