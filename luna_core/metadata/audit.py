"""A catalog-wide check that stored prompts hold only text a generator encoded: no command-line
switch, no JSON fragment, no ComfyUI node link, no mojibake. Each finding is a parse that went
wrong."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from luna_core.catalog.connection import open_catalog

# RE2 patterns (DuckDB's regexp_*). Each names one way a parse leaks what is not prompt text.
LEAKS = {
    # Two or more of InvokeAI Dream's switches with their values: `-s 50 -S 42`, `-U 4 0.95`, `-V
    # 1,0.1;2,0.1`.
    "command-line switch": (r"(?:^|\s)-(?:s|S|W|H|C|A|G|U|V|v|f|cf|ft)\s+-?\d[\d.,;:]*(?:\s|$)", 2),
    # "key": value, as JSON holds it.
    "JSON fragment": (r"\"[A-Za-z_][\w ]*\"\s*:\s*[\"\[{\d]", 1),
    # A ComfyUI link ["6", 0]: an input followed instead of its text.
    "ComfyUI node link": (r"\[\s*\"[\w-]+\"\s*,\s*\d+\s*\]", 1),
    # UTF-8 read as Latin-1: a lead byte then continuation bytes, each as its own character.
    "mojibake": (r"[\x{C2}-\x{DF}][\x{80}-\x{BF}]|[\x{E0}-\x{EF}][\x{80}-\x{BF}]{2}", 1),
    # A wildcard template (`__colors__`): the text a wildcard node or extension filled in is what
    # was encoded.
    "wildcard template": (r"(?:^|[\s,(\[{])__[\w\-/.*]+__(?:$|[\s,)\]}:])", 1),
}
EXAMPLES = 5


@dataclass
class PromptAudit:
    checked: int = 0
    # leak -> generations whose prompt or negative has it
    found: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, str]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not any(self.found.values())


def audit_prompts(catalog_path: str | Path) -> PromptAudit:
    audit = PromptAudit()
    with open_catalog(catalog_path, read_only=True) as con:
        audit.checked = con.execute(
            "SELECT count(*) FROM generations WHERE prompt IS NOT NULL "
            "OR negative_prompt IS NOT NULL"
        ).fetchone()[0]
        for leak, (pattern, least) in LEAKS.items():
            hit = (
                "(len(regexp_extract_all(coalesce(prompt, ''), $p)) >= $n "
                "OR len(regexp_extract_all(coalesce(negative_prompt, ''), $p)) >= $n)"
            )
            rows = con.execute(
                "SELECT content_hash, generator, source, left(coalesce(prompt, "
                "negative_prompt), 120) "
                f"FROM generations WHERE {hit} ORDER BY content_hash",
                {"p": pattern, "n": least},
            ).fetchall()
            audit.found[leak] = len(rows)
            audit.examples += [
                {"leak": leak, "content_hash": h, "generator": g, "source": s or "", "text": t}
                for h, g, s, t in rows[:EXAMPLES]
            ]
    return audit
