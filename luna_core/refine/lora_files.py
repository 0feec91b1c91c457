"""LoRA names and sets as people write them, and the LoRA files they name: found by file name, by
path below a configured folder, or by hash (see luna_core.refine.lora for reading and applying
them)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from luna_core.errors import LunaConfigError
from luna_core.metadata.record import Lora

MAX_LORAS_PER_ITEM = 64
HASH_DIGITS = 10  # the shortest hash prefix a name may be matched by (A1111 writes 12)


class LoraError(LunaConfigError):
    """A LoRA file that cannot be used: unreadable, in an unknown layout, or for another UNet."""


def parse_lora(text: str) -> Lora:
    """`NAME:WEIGHT` or `NAME` (weight 1), as `--lora` takes it; a name may itself hold colons."""
    name, _, weight = text.strip().rpartition(":")
    if not name:
        return Lora(weight.strip(), 1.0) if weight.strip() else _bad_lora(text)
    try:
        return Lora(name.strip(), float(weight))
    except ValueError:
        return Lora(text.strip(), 1.0)


def _bad_lora(text: str) -> Lora:
    raise LunaConfigError(f"--lora {text!r}: give NAME or NAME:WEIGHT")


def canonical_name(name: str) -> str:
    """A LoRA's name as written by any tool (`film_grain`, `film_grain.safetensors`,
    `styles\\film_grain.pt`) without its file suffix and with forward slashes."""
    name = name.strip().replace("\\", "/")
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and suffix.lower() in ("safetensors", "pt", "ckpt", "bin") else name


def lora_set(loras: Iterable[Lora | dict | str]) -> tuple[Lora, ...]:
    """One item's LoRA set from the forms people write it in (Lora, {"name", "weight"}, "NAME:W"),
    with a name given twice kept once, its weights added."""
    merged: dict[str, float] = {}
    if not isinstance(loras, list | tuple):
        raise LunaConfigError(
            f"LoRAs are a list of NAME:WEIGHT or {{name, weight}} (got {type(loras).__name__})"
        )
    if len(loras) > MAX_LORAS_PER_ITEM:
        raise LunaConfigError(f"{len(loras)} LoRAs for one item (at most {MAX_LORAS_PER_ITEM})")
    for lora in loras:
        if not isinstance(lora, Lora | dict | str):
            raise LunaConfigError(f"a LoRA is NAME:WEIGHT or {{name, weight}} (got {lora!r})")
        if isinstance(lora, str):
            lora = parse_lora(lora)
        elif isinstance(lora, dict):
            if not isinstance(lora.get("name"), str) or not lora["name"].strip():
                raise LunaConfigError(f"a LoRA needs a name (got {lora!r})")
            try:
                lora = Lora(lora["name"].strip(), float(lora.get("weight", 1.0)))
            except (TypeError, ValueError):
                raise LunaConfigError(
                    f"LoRA {lora['name']!r}: weight {lora.get('weight')!r} is not a number"
                ) from None
        name = canonical_name(lora.name)
        merged[name] = merged.get(name, 0.0) + float(lora.weight)
    return tuple(Lora(name, weight) for name, weight in merged.items() if weight != 0.0)


def neighbour_loras(neighbours: Sequence[tuple[float, Sequence]], cap: int) -> tuple[Lora, ...]:
    """The weighted union of the neighbours' LoRAs: each LoRA's weight is the sum over the
    neighbours of (neighbour weight x LoRA weight); the `cap` strongest (by absolute weight) are
    kept."""
    summed: dict[str, float] = {}
    for share, loras in neighbours:
        for lora in lora_set(list(loras or ())):
            summed[lora.name] = summed.get(lora.name, 0.0) + float(share) * lora.weight
    ranked = sorted(summed.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    return tuple(
        Lora(name, round(weight, 4)) for name, weight in ranked[: max(0, cap)] if weight != 0.0
    )


def parse_lora_hashes(text: str | None) -> dict[str, str]:
    """A1111's `Lora hashes` setting ("detail_tweaker_xl: 4b5e3f2a1c9d, film: 0a1b…") → {name:
    hash}; entries that are not a name and a hex hash are left out."""
    out: dict[str, str] = {}
    for entry in (text or "").split(",")[:MAX_LORAS_PER_ITEM]:
        name, _, digest = entry.rpartition(":")
        digest = digest.strip().lower()
        if name.strip() and re.fullmatch(r"[0-9a-f]{%d,64}" % HASH_DIGITS, digest):
            out[canonical_name(name)] = digest
    return out


# ------------------------------------------------------------------ finding files


def tensor_data_hash(path: Path) -> str:
    """sha256 of a .safetensors file's tensor data (the bytes after its header): A1111's and
    Civitai's LoRA hash, unchanged when only the file's metadata is edited."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        header = f.read(8)
        if len(header) < 8:
            raise LoraError(f"LoRA {path} is not a safetensors file (shorter than its header)")
        f.seek(8 + int.from_bytes(header, "little"))
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _named_path(name: str) -> Path | None:
    """The file a LoRA name spells as a path (`/x/y`, `~/y`, `./y`; `.safetensors` may be left
    out, as canonical_name leaves it), or None for a name."""
    text = name.strip()
    if not text.startswith(("/", "~", "./", "../")):
        return None
    path = Path(text).expanduser()
    if path.suffix.lower() == ".safetensors" or path.is_file():
        return path
    return path.with_name(path.name + ".safetensors")


@dataclass
class LoraLibrary:
    """The LoRA files in the configured folders, found by name, relative path or hash."""

    dirs: tuple[Path, ...]
    _files: list[Path] | None = None
    _hashes: dict[tuple, str] = field(default_factory=dict)  # (path, mtime_ns, size) → hash

    @property
    def files(self) -> list[Path]:
        if self._files is None:
            self._files = sorted(
                p for d in self.dirs if d.is_dir() for p in d.rglob("*.safetensors") if p.is_file()
            )
        return self._files

    def find(self, name: str) -> Path | None:
        named_path = _named_path(name)
        if named_path is not None:  # a path is that file, never a name to look for
            return named_path if named_path.is_file() else None
        wanted = name.strip().replace("\\", "/").lower()
        wanted = wanted[: -len(".safetensors")] if wanted.endswith(".safetensors") else wanted
        for path in self.files:  # a path below a folder, then a file name
            for folder in self.dirs:
                if (
                    path.is_relative_to(folder)
                    and path.relative_to(folder).with_suffix("").as_posix().lower() == wanted
                ):
                    return path
        by_stem = [p for p in self.files if p.stem.lower() == wanted.rsplit("/", 1)[-1]]
        if by_stem:
            return by_stem[0]
        if re.fullmatch(r"[0-9a-f]{%d,64}" % HASH_DIGITS, wanted):
            for path in self.files:
                stat = path.stat()
                key = (path, stat.st_mtime_ns, stat.st_size)
                if key not in self._hashes:
                    self._hashes[key] = tensor_data_hash(path)
                if self._hashes[key].startswith(wanted):
                    return path
        return None

    def resolve(
        self, names: Iterable[str], hashes: dict[str, str] | None = None
    ) -> tuple[dict[str, Path], list[str]]:
        """(found name → file, missing names), from the folders as they are now (files come and
        go); a name no file is called by is looked for by its hash in `hashes` (what the image's
        metadata recorded)."""
        self._files = None
        found, missing = {}, []
        for name in dict.fromkeys(names):
            path = self.find(name)
            if path is None and (hashes or {}).get(name):
                path = self.find(hashes[name])
            if path is None:
                missing.append(name)
            else:
                found[name] = path
        return found, missing
