"""The report as files a person opens: markdown, one standalone HTML (plots and contact sheet
embedded as data URIs: it opens offline and references nothing), and PNG plots made with
matplotlib."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from luna_core.reports.ordering import (
    clip_i_cell,
    clip_t_said,
    ordering_lines,
    quality_of,
)

HEADLINE_COLUMNS = (
    "source",
    "token cos",
    "pooled cos",
    "MSE",
    "R@1",
    "R@5",
    "beats mean",
    "CLIP-I",
)


def headline_rows(report: dict) -> list[dict]:
    rows = []
    clip_i = quality_of(report).get("clip_i", {})
    for source in report["sources"]:
        s = source["summary"]
        with_ci = _with_interval(source)
        rows.append(
            {
                "source": source["name"],
                "token cos": with_ci("token_cosine"),
                "pooled cos": with_ci("pooled_cosine"),
                "MSE": with_ci("mse"),
                "R@1": with_ci("R@1", 3),
                "R@5": with_ci("R@5", 3),
                "beats mean": f"{s['beats_mean']:.2f}" if "beats_mean" in s else "—",
                "CLIP-I": clip_i_cell(clip_i.get(source["quality_column"] or "", [])),
            }
        )
    return rows


def _with_interval(source: dict):
    def render(metric: str, digits: int = 4) -> str:
        low_high = source["intervals"].get(metric)
        value = f"{source['summary'][metric]:.{digits}f}"
        return (
            f"{value} [{low_high[0]:.{digits}f}, {low_high[1]:.{digits}f}]" if low_high else value
        )

    return render


def markdown_table(rows: list[dict], columns) -> str:
    def cell(value) -> str:
        return str("" if value is None else value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def plots(
    report: dict, per_image: dict[str, dict[str, np.ndarray]], folder: Path
) -> dict[str, Path]:
    """metrics.png (bars with 95 % intervals), vault_vs_projector.png (per-image scatter),
    cost_quality.png."""
    # matplotlib takes half a second to import: only rendering a report pays for it
    import matplotlib

    matplotlib.use("Agg")
    # matplotlib takes half a second to import: only rendering a report pays for it
    import matplotlib.pyplot as plt

    out = {}
    sources = report["sources"]
    names = [s["name"] for s in sources]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    mean = next((s for s in sources if s["kind"] == "mean"), None)
    for ax, metric, title in (
        (axes[0], "token_cosine", "token cosine to the true conditioning"),
        (axes[1], "pooled_cosine", "pooled cosine to the true conditioning"),
    ):
        # Points with their intervals on an axis fitted to them (bars from 0 hide differences of
        # 0.01).
        values = np.array([s["summary"][metric] for s in sources])
        lows = np.array([s["intervals"][metric][0] for s in sources])
        highs = np.array([s["intervals"][metric][1] for s in sources])
        positions = np.arange(len(sources))
        ax.errorbar(
            values,
            positions,
            xerr=[values - lows, highs - values],
            fmt="o",
            color="#4c72b0",
            capsize=4,
        )
        if mean is not None:
            ax.axvline(
                mean["summary"][metric],
                color="grey",
                linestyle="--",
                linewidth=1,
                label="mean of train",
            )
            ax.legend(fontsize=8, loc="lower left")
        ax.set_yticks(positions, names)
        ax.set_xlim(max(0.0, float(lows.min()) - 0.02), 1.005)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(title + " (95 % intervals)", fontsize=10)
    axes[0].invert_yaxis()
    out["metrics"] = _save(plt, fig, folder / "metrics.png")

    vault = per_image.get("vault")
    projector = next((v for k, v in per_image.items() if k.startswith("projector")), None)
    if vault is not None and projector is not None:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(vault["token_cosine"], projector["token_cosine"], s=12, alpha=0.7)
        lo = float(min(vault["token_cosine"].min(), projector["token_cosine"].min()))
        hi = float(max(vault["token_cosine"].max(), projector["token_cosine"].max()))
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1)
        ax.set_xlabel("vault k-NN token cosine")
        ax.set_ylabel("champion projector token cosine")
        ax.set_title("per test image")
        out["vault_vs_projector"] = _save(plt, fig, folder / "vault_vs_projector.png")

    benchmark = report.get("benchmark") or {}
    costs = {c["source"]: c for c in (benchmark.get("costs") or {}).get("sources", [])}
    points = [
        (costs[s["name"]]["ms_batch_1"], s["summary"]["token_cosine"], s["name"])
        for s in sources
        if s["name"] in costs and costs[s["name"]].get("ms_batch_1") is not None
    ]
    if points:
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        markers = "osD^v<>phX*"
        # a legend, not labels on the points: they overlap
        for i, (ms, quality, name) in enumerate(points):
            ax.scatter(max(ms, 1e-3), quality, s=60, marker=markers[i % len(markers)], label=name)
        ax.set_xscale("log")
        ax.set_xlabel("latency per image at batch 1 (ms, median; constants drawn at 0.001)")
        ax.set_ylabel("token cosine to the true prompt")
        ax.set_title(
            f"cost vs quality (costs from the benchmark of {benchmark.get('created', '?')})",
            fontsize=9,
        )
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        ax.grid(alpha=0.3)
        out["cost_quality"] = _save(plt, fig, folder / "cost_quality.png")
    return out


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _split_counts(report: dict) -> str:
    sizes = report.get("split_sizes", {})
    return ", ".join(
        f"{split} {v['images']} ({v['with embedding and prompt']} with an embedding and an "
        "encoded prompt)"
        for split, v in sorted(sizes.items())
    )


def _exclusions(test_set: dict) -> list[str]:
    lines = []
    for reason, items in test_set.get("excluded", {}).items():
        shown = ", ".join(f"`{item}`" for item in items[:10]) + (
            f" and {len(items) - 10} more" if len(items) > 10 else ""
        )
        lines.append(f"- {len(items)} left out: {reason}: {shown}")
    return lines


def markdown(report: dict, images: dict[str, str]) -> str:
    """The report as markdown; `images` maps a name to the file name beside report.md."""
    test_set = report["test_set"]
    lines = [f"# Luna refinement report — {report['created']}", "", report["verdict"]["text"], ""]
    if report.get("warning"):
        lines += [f"> **{report['warning']}**", ""]
    lines += [test_set["described"], ""]
    lines += _exclusions(test_set) + ([""] if test_set.get("excluded") else [])
    lines += [
        f"Profile `{report['profile']}`: vision `{report['vision_model']}` "
        f"({report['vision_key']}), SDXL "
        f"text encoders `{report['sdxl_model']}` ({report['text_key']}). Index "
        f"v{report['index_version']} "
        f"({report['index'].get('factory', '?')}); projectors compared: "
        f"{', '.join(report['projector_versions']) or 'none registered'}.",
        f"Splits in the catalog: {_split_counts(report)}. Near-duplicates (vision cosine ≥ "
        f"{test_set['near_duplicate_cosine']}, or the same prompt and seed) share a split and "
        "are left out of "
        f"each other's vault answers. Test fingerprint `{test_set['fingerprint']}`. Intervals "
        "are bootstrap 95 %.",
        "",
        "## Conditioning sources on the test set",
        "",
        markdown_table(headline_rows(report), HEADLINE_COLUMNS),
        "",
    ]
    if "metrics" in images:
        lines += [
            f"![metrics]({images['metrics']})",
            "",
            "Each source's own interval is drawn here; the verdict compares sources on the same "
            "images "
            "(paired differences), which can separate sources whose intervals overlap.",
            "",
        ]
    if "vault_vs_projector" in images:
        lines += [f"![vault vs projector]({images['vault_vs_projector']})", ""]
    benchmark = report.get("benchmark")
    if not benchmark:
        lines += [
            "## Regeneration and costs",
            "",
            "No benchmark has run yet: it runs weekly, or on demand (materialize "
            "`refinement_benchmark` in the "
            "Dagster UI, or `luna report --benchmark`).",
            "",
        ]
        return "\n".join(lines)
    load = (benchmark.get("load") or {}).get("before") or {}
    when = (
        f"From the benchmark of {benchmark['created']} (index v{benchmark.get('index_version')}, "
        "test series "
        f"{benchmark.get('test_series')}; machine load {load.get('load_1min', '?')} on "
        f"{load.get('cores', '?')} "
        f"cores as it began: costs move with load)."
    )
    quality = benchmark.get("quality") or {}
    if quality:
        lines += [
            "## Regeneration through the chess refiner",
            "",
            when,
            "",
            f"{len(quality.get('sample_paths', []))} test images"
            + (
                " resized to the UNet's native size"
                if quality["settings"].get("native_size")
                else ""
            )
            + ""
            f", grid {quality['settings']['grid']}, "
            f"strength {quality['settings']['strength']}, {quality['settings']['steps']} steps, "
            "same seeds for "
            "every source. CLIP-I = cosine of the vision encoder's embeddings of result and "
            "original, shown "
            f"with its interval and n because it rests on a sample of images. "
            + clip_t_said(quality),
            "",
        ]
        lines += (
            [
                "What the method predicts (true prompt >= vault and projector > mean > empty), "
                "checked on paired "
                "differences:",
                "",
            ]
            + [f"- {line}" for line in ordering_lines(report)]
            + [""]
        )
        if "contact_sheet" in images:
            lines += [f"![contact sheet]({images['contact_sheet']})", ""]
    costs = benchmark["costs"]
    lines += [
        "## Costs",
        "",
        when + f" Medians over {costs.get('repeats', '?')} repeats after a warm-up call.",
        "",
        markdown_table(
            costs["sources"],
            ["source", "parameters", "MB", "ms_batch_1", "ms_per_image_batch_64", "notes"],
        ),
        "",
        f"Index: recall@10 {costs['index'].get('recall_at_10', 0):.4f} on held-out vectors, "
        "query p50 "
        f"{costs['index'].get('p50_ms', 0):.3f} ms / p99 {costs['index'].get('p99_ms', 0):.3f} ms, "
        f"{costs['index'].get('mb', 0):.2f} MB; vault answer (search + row reads) p50 "
        f"{costs['vault_answer_p50_ms']:.2f} ms / p99 {costs['vault_answer_p99_ms']:.2f} ms.",
        "",
        "### True batching: whole refiner calls on one test image, batched vs `--sequential`",
        "",
        "One sampler call per pass against one per item, same seeds and conditionings; the "
        "difference is "
        "between the two saved images, in 0-255 levels.",
        "",
        markdown_table(
            [
                {"workload": k, **{c: _fmt(v.get(c)) for c in v}}
                for k, v in costs["batching"].items()
            ],
            [
                "workload",
                "items",
                "batched_s",
                "sequential_s",
                "speedup",
                "max_pixel_diff",
                "pixels_differing",
            ],
        ),
        "",
    ]
    if "cost_quality" in images:
        lines += [f"![cost vs quality]({images['cost_quality']})", ""]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if abs(value) < 1e-3 and value else f"{value:.3f}"
    return "" if value is None else str(value)


def standalone_html(markdown_text: str, images: dict[str, Path]) -> str:
    """One HTML file: the markdown rendered by a small converter (headings, tables, quotes,
    paragraphs), every image inlined as a data URI."""
    inline = {
        path.name: "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        for path in images.values()
    }
    body, table = [], []

    def flush_table() -> None:
        if not table:
            return
        rows = [r.strip().strip("|").split(" | ") for r in table if not set(r.strip()) <= set("|-")]
        head, *rest = rows
        body.append(
            "<table><tr>"
            + "".join(f"<th>{_inline(c)}</th>" for c in head)
            + "</tr>"
            + "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rest
            )
            + "</table>"
        )
        table.clear()

    for line in markdown_text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            src = src.rstrip(")")
            body.append(f'<p><img alt="{html.escape(alt)}" src="{inline.get(src, "")}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("> "):
            body.append(f"<blockquote>{_inline(line[2:])}</blockquote>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    flush_table()
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px "
        "8px;font-size:13px}"
        "th{background:#f3f3f3}img{max-width:100%}blockquote{background:#fff4e5;border-left:4px "
        "solid #f0a020;"
        "margin:0;padding:8px 12px}code{background:#f3f3f3;padding:1px 3px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Luna refinement report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )


def _inline(text: str) -> str:
    escaped = html.escape(text)
    parts = escaped.split("`")
    escaped = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = escaped.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
