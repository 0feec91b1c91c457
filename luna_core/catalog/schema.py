"""The catalog's tables, its schema version and the migrations from each older version (applied by
luna_core.catalog.connection.ensure_schema)."""

from luna_core.prompts.syntax import PARSER_VERSION, syntax_case_sql

SCHEMA_VERSION = 5
# Vault rows whose item left the library (its file deleted, or edited in place), moved out of
# vision_rows/text_rows: their Zarr rows are never handed out again, and come back if the item does.
_RETIRED_ROWS = """CREATE TABLE IF NOT EXISTS retired_rows (
        store_key VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,
        item_key VARCHAR NOT NULL,
        "row" BIGINT NOT NULL,
        token_count INTEGER,
        truncated BOOLEAN,
        retired_at TIMESTAMP NOT NULL,
        PRIMARY KEY (store_key, item_key)
    )"""
# What the library holds now: vault rows and generations of anything else are retired.
HELD_IMAGES = "SELECT content_hash FROM images WHERE status = 'ok'"
HELD_PROMPTS = "SELECT prompt_hash FROM prompts WHERE prompt_hash IS NOT NULL"
# Statements that bring a catalog of version v to v + 1, keyed by v. A catalog newer than this code
# is refused (an older Luna must not write tables it does not know).
# Where each generation record was read (png:parameters, exif:UserComment, comfy:prompt,
# alpha:stealth...).
_GENERATION_SOURCE = "ALTER TABLE generations ADD COLUMN IF NOT EXISTS source VARCHAR"
# Why an image got its split (luna_core.catalog.splits), the near-duplicate links found, and which
# images were compared (per vision store): migration 3 → 4.
_SPLIT_REASON = "ALTER TABLE splits ADD COLUMN IF NOT EXISTS reason VARCHAR"
# The prompt syntax a generation's writer reads its prompts by (luna_core.prompts), and the chunks
# of 77 tokens a conditioning spans (its rows follow one another from `row`): migration 4 → 5. A
# conditioning's key is the SHA-256 of its rules and text, so the same text under two writers is two
# conditionings; the literal rules keep the text's own hash, which every earlier row has.
_PROMPT_SYNTAX = "ALTER TABLE generations ADD COLUMN IF NOT EXISTS prompt_syntax VARCHAR"
SYNTAX_OF_GENERATOR = syntax_case_sql()
_FILL_SYNTAX = (
    f"UPDATE generations SET prompt_syntax = {SYNTAX_OF_GENERATOR} WHERE prompt_syntax IS NULL"
)
_TEXT_CHUNKS = "ALTER TABLE text_rows ADD COLUMN IF NOT EXISTS chunks INTEGER DEFAULT 1"
_RETIRED_CHUNKS = "ALTER TABLE retired_rows ADD COLUMN IF NOT EXISTS chunks INTEGER DEFAULT 1"


def conditioning_key_sql(text: str, syntax: str) -> str:
    """The SQL of luna_core.prompts.syntax.conditioning_key for columns `text` and `syntax`."""
    return (
        f"CASE WHEN coalesce({syntax}, 'literal') = 'literal' THEN sha256({text}) "
        f"ELSE sha256({syntax} || '/{PARSER_VERSION}' || chr(10) || {text}) END"
    )


# Every unique conditioning to encode: a prompt text (positive or negative) with the syntax it is
# read by.
PROMPTS_VIEW = f"""CREATE OR REPLACE VIEW prompts AS
        SELECT DISTINCT {conditioning_key_sql("text", "syntax")} AS prompt_hash, text AS prompt,
               coalesce(syntax, 'literal') AS syntax, length(text) AS chars
        FROM (SELECT prompt AS text, prompt_syntax AS syntax FROM generations
              UNION SELECT negative_prompt, prompt_syntax FROM generations)
        WHERE text IS NOT NULL"""
_NEAR_DUPLICATES = """CREATE TABLE IF NOT EXISTS near_duplicates (
        content_hash VARCHAR NOT NULL,
        twin_hash VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,  -- vision (cosine >= the profile's threshold) | prompt and seed
        similarity DOUBLE,  -- the cosine; NULL for prompt and seed
        found_at TIMESTAMP NOT NULL,
        PRIMARY KEY (content_hash, twin_hash, kind)
    )"""
_TWIN_SCANS = """CREATE TABLE IF NOT EXISTS twin_scans (
        store_key VARCHAR NOT NULL,
        content_hash VARCHAR NOT NULL,
        scanned_at TIMESTAMP NOT NULL,
        PRIMARY KEY (store_key, content_hash)
    )"""
MIGRATIONS: dict[int, list[str]] = {
    1: [_RETIRED_ROWS],
    2: [_GENERATION_SOURCE],
    3: [_SPLIT_REASON, _NEAR_DUPLICATES, _TWIN_SCANS],
    4: [_PROMPT_SYNTAX, _FILL_SYNTAX, _TEXT_CHUNKS, _RETIRED_CHUNKS, PROMPTS_VIEW],
}

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS schema_info (key VARCHAR PRIMARY KEY, value VARCHAR)""",
    # One row per file path. `status`: ok | missing (gone since last scan) | quarantined (path now
    # holds a file that cannot be read; see quarantine).
    """CREATE TABLE IF NOT EXISTS images (
        path VARCHAR PRIMARY KEY,
        content_hash VARCHAR NOT NULL,
        root VARCHAR NOT NULL,
        size_bytes BIGINT NOT NULL,
        mtime_ns BIGINT NOT NULL,
        width INTEGER,
        height INTEGER,
        format VARCHAR,
        status VARCHAR NOT NULL,
        first_seen TIMESTAMP NOT NULL,
        last_seen TIMESTAMP NOT NULL,
        moved_from VARCHAR,
        warnings VARCHAR[]
    )""",
    # One row per content hash: how the image was made.
    """CREATE TABLE IF NOT EXISTS generations (
        content_hash VARCHAR PRIMARY KEY,
        generator VARCHAR NOT NULL,
        generator_version VARCHAR,
        prompt VARCHAR,
        negative_prompt VARCHAR,
        seed HUGEINT,
        steps INTEGER,
        sampler VARCHAR,
        scheduler VARCHAR,
        cfg_scale DOUBLE,
        width INTEGER,
        height INTEGER,
        model VARCHAR,
        model_hash VARCHAR,
        loras STRUCT(name VARCHAR, weight DOUBLE)[],
        extra JSON,
        raw JSON,
        warnings VARCHAR[],
        parsed_at TIMESTAMP NOT NULL
    )""",
    _GENERATION_SOURCE,  # a column added by migration 2 → 3; fresh catalogs get it the same way
    _PROMPT_SYNTAX,  # added by migration 4 → 5, as the two below
    # Every file that could not be read, with a reason code and a sentence for a person.
    """CREATE TABLE IF NOT EXISTS quarantine (
        path VARCHAR PRIMARY KEY,
        root VARCHAR NOT NULL,
        reason VARCHAR NOT NULL,
        detail VARCHAR NOT NULL,
        size_bytes BIGINT,
        mtime_ns BIGINT,
        seen_at TIMESTAMP NOT NULL
    )""",
    # The vault: one row per store (a model's Zarr group), and which Zarr row holds which item.
    """CREATE TABLE IF NOT EXISTS vault_stores (
        store_key VARCHAR PRIMARY KEY,
        kind VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        revision VARCHAR,
        path VARCHAR NOT NULL,
        shapes JSON NOT NULL,
        created_at TIMESTAMP NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS vision_rows (
        store_key VARCHAR NOT NULL,
        content_hash VARCHAR NOT NULL,
        "row" BIGINT NOT NULL,
        committed_at TIMESTAMP NOT NULL,
        PRIMARY KEY (store_key, content_hash)
    )""",
    # token_count: CLIP tokens with start/end; truncated: cut at 77 tokens (the literal rules only);
    # chunks: the rows its conditioning spans, from "row" on (its chunk rows 2.. are keyed
    # prompt_hash#2 ...).
    """CREATE TABLE IF NOT EXISTS text_rows (
        store_key VARCHAR NOT NULL,
        prompt_hash VARCHAR NOT NULL,
        "row" BIGINT NOT NULL,
        token_count INTEGER NOT NULL,
        truncated BOOLEAN NOT NULL,
        committed_at TIMESTAMP NOT NULL,
        PRIMARY KEY (store_key, prompt_hash)
    )""",
    _TEXT_CHUNKS,
    _RETIRED_ROWS,
    _RETIRED_CHUNKS,
    # Items a model could not embed (an image that no longer decodes...), with the reason.
    """CREATE TABLE IF NOT EXISTS embedding_failures (
        store_key VARCHAR NOT NULL,
        item_key VARCHAR NOT NULL,
        path VARCHAR,
        reason VARCHAR NOT NULL,
        detail VARCHAR NOT NULL,
        failed_at TIMESTAMP NOT NULL,
        PRIMARY KEY (store_key, item_key)
    )""",
    PROMPTS_VIEW,
    # Stable per content hash, assigned once (luna_core.catalog.library_view): FAISS ids and the
    # data split.
    """CREATE TABLE IF NOT EXISTS image_ids (
        content_hash VARCHAR PRIMARY KEY,
        image_id BIGINT NOT NULL UNIQUE,
        assigned_at TIMESTAMP NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS splits (
        content_hash VARCHAR PRIMARY KEY,
        split VARCHAR NOT NULL,
        assigned_at TIMESTAMP NOT NULL
    )""",
    _SPLIT_REASON,  # added by migration 3 → 4; fresh catalogs get it the same way
    _NEAR_DUPLICATES,
    _TWIN_SCANS,
    """CREATE TABLE IF NOT EXISTS ingest_runs (
        run_id VARCHAR PRIMARY KEY,
        started_at TIMESTAMP NOT NULL,
        finished_at TIMESTAMP,
        roots VARCHAR[],
        counts JSON
    )""",
]
