"""A verification report as one self-contained HTML page: inline CSS, inline SVG plots, no script, no
external asset, the signed JSON embedded (``<script type="application/json">``, which no browser runs).

The rendering is deterministic (same report, same bytes), so a signed page can be checked byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any

from lethe.service.verification_report import VerificationReport

TEAL, AMBER, GREY = "#0f766e", "#b45309", "#6b7280"
CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#111827;background:#f9fafb}
main{max-width:980px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:28px 0 8px;border-bottom:1px solid #e5e7eb}
.sub{color:#4b5563;margin:0 0 16px}.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:12px}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:12px}
.card .v{font-size:1.6em;font-weight:600}.card .k{color:#4b5563;font-size:.85em}
table{border-collapse:collapse;width:100%;background:#fff;font-size:.92em}
th,td{border:1px solid #e5e7eb;padding:5px 8px;text-align:left;vertical-align:top}th{background:#f3f4f6}
td.n{text-align:right;font-variant-numeric:tabular-nums}.src{color:#4b5563;font-size:.85em}
figure{margin:12px 0;background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:8px}
figcaption{color:#374151;font-size:.9em}.note{background:#fffbeb;border:1px solid #fcd34d;padding:8px;border-radius:6px}
code{font-size:.9em}
"""


def fmt(value: Any, digits: int = 3) -> str:
    """A figure for people: ``n/a`` for missing, fixed digits for fractions, thousands separators for counts."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def bar_chart(title: str, bars: Sequence[tuple[str, float | None, str]], scale: float = 1.0, unit: str = "") -> str:
    """A horizontal bar chart as inline SVG: ``(label, value, colour)`` per bar, bars scaled to ``scale``."""
    width, label_w, row_h = 720, 300, 26
    height = row_h * len(bars) + 12
    top = max([scale, *[v for _, v, _ in bars if v is not None]]) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}" '
        f'viewBox="0 0 {width} {height}" width="100%" style="max-width:{width}px">',
        f"<title>{escape(title)}</title>",
    ]
    for index, (label, value, colour) in enumerate(bars):
        y = 6 + index * row_h
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end" font-size="12" fill="#374151">'
            f"{escape(label)}</text>"
        )
        if value is None:
            parts.append(f'<text x="{label_w + 4}" y="{y + 16}" font-size="12" fill="{GREY}">n/a</text>')
            continue
        length = max(1.0, (width - label_w - 70) * value / top)
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{length:.1f}" height="{row_h - 8}" fill="{colour}"/>')
        parts.append(
            f'<text x="{label_w + length + 6:.1f}" y="{y + 16}" font-size="12" fill="#111827">'
            f"{escape(fmt(value))}{escape(unit)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            numeric = isinstance(cell, int | float) and not isinstance(cell, bool)
            cells.append(f'<td class="n">{escape(fmt(cell))}</td>' if numeric else f"<td>{escape(fmt(cell))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _cards(report: VerificationReport) -> str:
    items = [
        ("scope recall (held-out)", report.scope.recall_heldout),
        ("false-positive rate (held-out)", report.scope.fpr_heldout),
        ("leak rate", report.leak_rate),
        ("utility change", report.utility_delta),
    ]
    cards = "".join(
        f'<div class="card"><div class="v">{escape(fmt(v))}</div><div class="k">{escape(k)}</div></div>'
        for k, v in items
    )
    return f'<div class="cards">{cards}</div>'


def _scope(report: VerificationReport) -> str:
    scope = report.scope
    bars = [
        (f"{kind} ({rate.prompts})", rate.flag_rate, TEAL if rate.in_scope else AMBER)
        for kind, rate in scope.by_kind.items()
    ]
    chart = _figure(
        bar_chart("Flag rate per kind of held-out prompt", bars),
        "Flag rate per kind: teal must be flagged (recall), amber must not (false positives).",
    )
    rows = [
        ["recall, held-out in-scope prompts", scope.recall_heldout, scope.positives],
        ["false-positive rate, all held-out negatives", scope.fpr_heldout, scope.negatives],
        ["false-positive rate, the evaluation data's negatives", scope.fpr_negatives, None],
        ["false-positive rate, general test split", scope.fpr_general, None],
    ]
    return (
        f"<h2>Scope</h2>{chart}{_table(['figure', 'value', 'prompts'], rows)}"
        f'<p class="src">Data: {escape(scope.source or "none")}</p>'
    )


def _leak(report: VerificationReport) -> str:
    leak = report.leak
    bars: list[tuple[str, float | None, str]] = []
    rows = []
    if leak.reveal is not None:
        bars += [
            ("bare model, build's first reveal", leak.reveal.base_reveal_rate, GREY),
            ("through the forget set, fresh re-reveal", leak.reveal.rate, TEAL),
        ]
        rows.append(
            [
                "fresh re-reveal",
                leak.reveal.rate,
                leak.reveal.base_reveal_rate,
                leak.reveal.asked,
                f"seed {leak.reveal.seed}; {leak.reveal.criterion}",
            ]
        )
    if leak.heldout is not None:
        bars += [
            ("bare model, held-out answers", leak.heldout.base_rate, GREY),
            ("through the forget set, held-out answers", leak.heldout.rate, TEAL),
        ]
        rows.append(
            [
                "held-out in-scope answers",
                leak.heldout.rate,
                leak.heldout.base_rate,
                leak.heldout.asked,
                f"{leak.heldout.criterion}; {leak.heldout.source}",
            ]
        )
    if not rows:
        return "<h2>Leak</h2><p>No leak figure: no topic to re-reveal and no held-out prompts with keywords.</p>"
    chart = _figure(bar_chart("Leak rate, bare model against the forget set", bars), "Share of answers that leak.")
    return f"<h2>Leak</h2>{chart}{_table(['measure', 'Lethe', 'bare model', 'asked', 'criterion and data'], rows)}"


def _utility(report: VerificationReport) -> str:
    measures = report.utility.measures
    if not measures:
        return "<h2>Utility</h2><p>Not measured.</p>"
    bars = []
    for m in measures:
        bars += [
            (f"{m.name}: bare ({m.measure})", m.before, GREY),
            (f"{m.name}: through the forget set", m.after, TEAL),
        ]
    chart = _figure(bar_chart("Utility before and after", bars), "Utility on prompts that must stay answerable.")
    rows = [[m.name, m.measure, m.before, m.after, m.delta, m.rows, m.flagged, m.source] for m in measures]
    headers = ["set", "measure", "bare", "Lethe", "change", "prompts", "flagged", "data"]
    return f"<h2>Utility</h2>{chart}{_table(headers, rows)}"


def _fluency_latency(report: VerificationReport) -> str:
    fl, lat = report.fluency, report.latency
    fluency_bars = [
        ("distinct-2, bare answers", fl.bare_distinct_2, GREY),
        ("distinct-2, flagged answers", fl.distinct_2, TEAL),
        ("loop rate, bare answers", fl.bare_loop_rate, GREY),
        ("loop rate, flagged answers", fl.loop_rate, TEAL),
    ]
    latency_bars = [
        ("classification p50", lat.classify_ms_p50, TEAL),
        ("classification p95", lat.classify_ms_p95, TEAL),
        ("generation per token, bare", lat.bare_ms_per_token, GREY),
        ("generation per token, flagged", lat.flagged_ms_per_token, AMBER),
    ]
    fluency_rows = [
        ["flagged answers", fl.flagged_answers, None],
        ["loop rate", fl.loop_rate, fl.bare_loop_rate],
        ["distinct-2", fl.distinct_2, fl.bare_distinct_2],
        ["bare-model perplexity", fl.base_perplexity, fl.bare_base_perplexity],
    ]
    latency_rows = [
        ["prompts classified", lat.classified],
        ["classification p50 (ms)", lat.classify_ms_p50],
        ["classification p95 (ms)", lat.classify_ms_p95],
        ["bare generation (ms/token)", lat.bare_ms_per_token],
        ["flagged generation (ms/token)", lat.flagged_ms_per_token],
        ["flagged / bare", lat.flagged_overhead_ratio],
    ]
    return (
        "<h2>Fluency of flagged answers</h2>"
        + _figure(bar_chart("Fluency, bare against flagged answers", fluency_bars), "Same prompts, greedy answers.")
        + _table(["figure", "flagged answers", "bare answers, same prompts"], fluency_rows)
        + f'<p class="src">Data: {escape(fl.source or "none")}</p>'
        + "<h2>Added latency</h2>"
        + _figure(bar_chart("Added latency", latency_bars, unit=" ms"), lat.note)
        + _table(["figure", "value"], latency_rows)
    )


def _privacy(report: VerificationReport) -> str:
    p = report.privacy
    rows = [
        ["forget quality (KS p-value, 1 is ideal)", p.forget_quality],
        ["Min-K% membership AUC (0.5 is ideal)", p.mia_auc],
    ]
    return f'<h2>Privacy</h2>{_table(["figure", "value"], rows)}<p class="src">{escape(p.source)}</p>'


def _provenance(report: VerificationReport) -> str:
    life, request = report.lifecycle, report.request
    summary = request.summary
    request_rows = [
        ["kind", summary.kind if summary else None],
        ["SHA-256 of the request", summary.sha256 if summary else None],
        ["forget rows / retain rows", f"{summary.forget_rows} / {summary.retain_rows}" if summary else None],
        ["paraphrased prompts (held out)", summary.paraphrased_prompts if summary else None],
        ["seed prompts", summary.seed_prompts if summary else None],
        ["topic", request.topic if request.topic is not None else "not included (the operator did not ask)"],
        ["source", request.source],
    ]
    life_rows = [
        ["registered", life.registered, life.registered_by or f"({life.source})"],
        ["training started", life.training_started, life.job_id],
        ["trained", life.trained, life.job_id],
        ["enabled now", "yes" if life.enabled else "no", f"live: {'yes' if life.live else 'no'}"],
        ["enabled at", life.enabled_at, life.enabled_by],
        *[[f"event: {e.event}", e.at, e.by_key] for e in life.events],
    ]
    model_rows = [
        ["base model", report.model_name],
        ["model fingerprint", report.model_fingerprint],
        ["method", report.method],
        ["parameters", json.dumps(report.parameters, sort_keys=True)],
    ]
    return (
        f"<h2>Request</h2>{_table(['field', 'value'], request_rows)}"
        f"<h2>Lifecycle</h2>{_table(['step', 'when', 'by / detail'], life_rows)}"
        f"<h2>Model and method</h2>{_table(['field', 'value'], model_rows)}"
    )


def render_html(signed: dict[str, Any]) -> str:
    """The page of a signed JSON report (embedded as it is), unsigned itself: ``ReportSigner.sign_html`` appends
    the page's signature."""
    report = VerificationReport.model_validate(signed)
    measured = report.measured
    how = (
        f"Measured by the {measured.by} at {measured.at} in {fmt(measured.seconds, 1)} s, on: "
        f"{'; '.join(measured.sources)}."
        if measured
        else "Not measured yet."
    )
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in report.notes)
    earlier = ""
    if report.earlier is not None:
        e = report.earlier
        rows = [
            ["scope recall", e.get("recall_heldout")],
            ["false-positive rate", e.get("fpr_heldout")],
            ["leak rate", e.get("leak_rate")],
            ["utility change", e.get("utility_delta")],
        ]
        title = f"The training job's own figures ({e.get('measured')})"
        earlier = f"<h2>{escape(title)}</h2>{_table(['figure', 'value'], rows)}"
    data = json.dumps(signed, sort_keys=True, ensure_ascii=True).replace("</", "<\\/")
    signature = report.signature or {}
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>Verification report: {escape(report.name)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>Verification report: {escape(report.name)}</h1>"
        f'<p class="sub">Forget set <code>{escape(report.forget_set_id)}</code> · {escape(report.method)} on '
        f"{escape(report.model_name)} · report created {escape(report.created)}</p>"
        f"<p>{escape(how)}</p>{notes}{_cards(report)}"
        f"{_scope(report)}{_leak(report)}{_utility(report)}{_fluency_latency(report)}{_privacy(report)}{earlier}"
        f"{_provenance(report)}"
        "<h2>Signature</h2>"
        f"<p>JSON signed with HMAC-SHA256, key id <code>{escape(signature.get('key_id', 'unsigned'))}</code>; this "
        "page carries its own signature on its last line. Check either file with "
        "<code>lethe report verify FILE</code>.</p>"
        f'<script type="application/json" id="lethe-report">{data}</script>'
        "</main></body></html>\n"
    )
