"""`luna doctor` finds each accident on a damaged home, names its fix, and `--repair` makes the
home whole."""

from __future__ import annotations

import shutil

from luna_cli.main import main
from luna_core.index.store import IndexStore
from luna_core.models.profiles import resolve_profile
from luna_core.operations.doctor import diagnose


def test_doctor_finds_each_accident_and_repairs_the_home(projector_home, capsys):
    home = projector_home
    profile = resolve_profile("tiny", home.models_dir)
    assert all(f.severity != "error" for f in diagnose(home))

    # garbage in the text store
    for shard in (home.text_store(profile) / "prompt_embeds" / "c").rglob("0"):
        if shard.is_file():
            data = bytearray(shard.read_bytes())
            for position in range(0, len(data) - (64 * 16 + 4), 997):
                data[position] ^= 0x55
            shard.write_bytes(bytes(data))
    index_file = IndexStore(home.index_dir(profile)).current().index_file  # garbage in the index
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index_file.write_bytes(bytes(data))
    shutil.rmtree(home.vision_store(profile))  # a deleted store

    findings = {f.what: f for f in diagnose(home)}
    assert (
        findings["vision store"].severity == "error"
        and "missing" in findings["vision store"].detail
    )
    assert findings["text store"].severity == "error" and "damaged" in findings["text store"].detail
    assert findings["index"].severity == "error" and "corrupted" in findings["index"].detail
    assert all("luna build" in findings[w].fix for w in ("vision store", "text store", "index"))

    assert main(["doctor", "--home", str(home.root)]) == 1
    assert main(["doctor", "--repair", "--home", str(home.root)]) == 0
    out = capsys.readouterr().out
    assert "repair: removing the damaged text store" in out
    assert all(f.severity != "error" for f in diagnose(home)), [f.line() for f in diagnose(home)]


def test_doctor_recode_rewrites_the_text_store_in_the_codec_the_home_names(projector_home, capsys):
    import numpy as np

    from luna_core.vault.segments import open_text_store

    home = projector_home  # this test's own copy
    profile = resolve_profile("tiny", home.models_dir)
    before = open_text_store(home, profile)
    assert before.codec == "pca-zstd"  # the default for new stores
    rows = np.arange(min(before.capacity, 40))
    values = before.read_rows("prompt_embeds", rows)

    home.set_setting("vault", "text_codec", "float16")
    assert any("--recode" in f.fix for f in diagnose(home) if f.what == "text store")
    assert main(["doctor", "--recode", "--home", str(home.root)]) == 0
    assert "recode: 1 text store(s) rewritten as float16" in capsys.readouterr().out
    after = open_text_store(home, profile)
    assert after.codec == "float16"
    # float16 keeps the decoded values exactly; a second recode has nothing to do
    np.testing.assert_array_equal(after.read_rows("prompt_embeds", rows), values)
    assert main(["doctor", "--recode", "--home", str(home.root)]) == 0
    assert "recode: 0 text store(s)" in capsys.readouterr().out
    assert all(f.severity != "error" for f in diagnose(home))
