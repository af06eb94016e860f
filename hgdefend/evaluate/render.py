"""The report for people: Markdown (``report.md``) and one self-contained HTML page (``report.html``).

Both come from the same section list, summary first. The HTML is the Markdown converted with
Python-Markdown, with every PNG embedded as a data URI and a small inline stylesheet: one file a
security lead opens in any browser, with no network fetches and no scripts.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .formatting import table


def render_markdown(report: dict[str, Any], sections: Sequence[Any]) -> str:
    """Title, summary and findings, then every present section in pipeline order, then the run."""
    lines = [f"# hgdefend report — {report.get('title', 'evaluation')}", ""]
    summary = report.get("summary") or {}
    if summary.get("lines"):
        lines += ["## Summary", ""] + [f"- {s}" for s in summary["lines"]] + [""]
    if report.get("findings"):
        lines += ["### Findings", ""] + [f"- **{f}**" for f in report["findings"]] + [""]
    for sec in sections:
        if sec.key in report and report[sec.key] is not None:
            lines += [f"## {sec.title}", "", *sec.render(report[sec.key]), ""]
    lines += ["## Run", ""]
    lines += table(["field", "value"], [[k, str(v)] for k, v in report.get("meta", {}).items()])
    return "\n".join(lines) + "\n"


_STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #1b1b1b; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
code { background: #f3f3f3; padding: 1px 4px; word-break: break-all; }
#summary + ul { background: #fff8e1; border-left: 4px solid #f0a500; padding: .8em 1.5em; }
"""


def _embed_images(body: str, out_dir: Path) -> str:
    """Replace ``src="file.png"`` with a data URI; a missing file keeps its (dead) name."""

    def repl(m: re.Match) -> str:
        name = html.unescape(m.group(1))
        p = out_dir / name
        if "/" in name or "\\" in name or not p.is_file():
            return m.group(0)
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    return re.sub(r'src="([^"]+\.png)"', repl, body)


def render_html(markdown_text: str, out_dir: str | Path, title: str) -> str:
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "toc"], output_format="html")
    body = _embed_images(body, Path(out_dir))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
