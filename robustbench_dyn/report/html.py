"""A small markdown -> HTML converter for the report (no dependency).

It handles the subset the report writes: ATX headings, paragraphs, pipe tables with an alignment
row, ``-``/``1.`` lists, ``>`` notes, ``---`` rules, fenced code, and inline code, bold, italic,
links and images. Images are linked by their relative path (index.html sits beside figures/, so the
page stays small: the report's 40-odd figures embedded would be ~7 MB of base64 in git). With
``embed_images=True`` (``robustdyn report --self-contained``) images under ``base_dir`` are embedded as
base64 data URIs instead, so index.html is one file that can be mailed or attached.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1180px; margin: 2em auto;
       padding: 0 1.2em; color: #1f2328; line-height: 1.5; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .25em; margin-top: 2.2em; }
h3 { margin-top: 1.6em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fbfcfd; }
img { max-width: 100%; height: auto; display: block; margin: 1em 0; border: 1px solid #eaeef2; }
code { background: #f3f4f6; padding: 0 4px; border-radius: 4px; font-size: 0.9em; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; }
blockquote { border-left: 4px solid #d0d7de; margin: 1em 0; padding: .2em 1em; color: #57606a; background: #fafbfc; }
.pass { color: #1a7f37; font-weight: 600; } .fail { color: #cf222e; font-weight: 600; }
"""

_IMG = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITAL = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")
_HEAD = re.compile(r"^(#{1,6})\s+(.*)$")
_OL = re.compile(r"^\d+\.\s+(.*)$")


def _slug(text: str) -> str:
    s = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return s.replace(" ", "-")


def _data_uri(src: str, base_dir: Path | None) -> str:
    """``src`` as a base64 data URI when it names a readable file under ``base_dir`` (else unchanged)."""
    if base_dir is None or re.match(r"^[a-z]+:", src):
        return src
    p = (base_dir / src)
    try:
        data = p.read_bytes()
    except OSError:
        return src
    mime = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def inline(text: str, base_dir: Path | None = None) -> str:
    """Inline markdown -> HTML (code spans are protected from the other rules). Images are embedded from
    ``base_dir`` when it is given, else linked as written."""
    slots: list[str] = []

    def keep(s: str) -> str:
        slots.append(s)
        return f"\x00{len(slots) - 1}\x00"

    text = _CODE.sub(lambda m: keep(f"<code>{html.escape(m.group(1))}</code>"), text)
    text = _IMG.sub(lambda m: keep(f'<img alt="{html.escape(m.group(1))}" '
                                   f'src="{_data_uri(m.group(2), base_dir)}">'), text)
    text = _LINK.sub(lambda m: keep(f'<a href="{html.escape(m.group(2))}">') + m.group(1) + keep("</a>"), text)
    text = html.escape(text, quote=False).replace("\\|", "|")
    text = _BOLD.sub(r"<strong>\1</strong>", text)
    text = _ITAL.sub(r"<em>\1</em>", text)
    text = re.sub(r"\bPASS\b", '<span class="pass">PASS</span>', text)
    text = re.sub(r"\bFAIL\b", '<span class="fail">FAIL</span>', text)
    return re.sub(r"\x00(\d+)\x00", lambda m: slots[int(m.group(1))], text)


def _split_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)]


def _table(lines: list[str], base_dir: Path | None) -> str:
    head = _split_row(lines[0])
    aligns = []
    for c in _split_row(lines[1]):
        left, right = c.startswith(":"), c.endswith(":")
        aligns.append("center" if left and right else "right" if right else "left")
    out = ["<table>", "<thead><tr>"]
    out += [f'<th style="text-align:{a}">{inline(h, base_dir)}</th>' for h, a in zip(head, aligns, strict=False)]
    out.append("</tr></thead><tbody>")
    for line in lines[2:]:
        cells = _split_row(line)
        out.append("<tr>" + "".join(f'<td style="text-align:{a}">{inline(c, base_dir)}</td>'
                                    for c, a in zip(cells, aligns, strict=False)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def markdown_to_html(md: str, *, base_dir: str | Path | None = None, title: str = "report",
                     embed_images: bool = False) -> str:
    """The whole document: ``<html>`` with the CSS inline. Images keep their relative links (resolved
    against the folder the HTML is written to), or with ``embed_images`` are embedded from ``base_dir``."""
    if embed_images and base_dir is None:
        raise ValueError("embed_images=True needs base_dir, the folder the image paths are relative to")
    base = Path(base_dir) if embed_images else None
    lines = md.splitlines()
    body: list[str] = []
    i = 0
    para: list[str] = []
    seen: dict[str, int] = {}

    def flush() -> None:
        if para:
            body.append("<p>" + inline(" ".join(para), base) + "</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        s = line.strip()
        if not s:
            flush()
            i += 1
            continue
        if s.startswith("```"):
            flush()
            j = i + 1
            code = []
            while j < len(lines) and not lines[j].strip().startswith("```"):
                code.append(lines[j])
                j += 1
            body.append("<pre><code>" + html.escape("\n".join(code)) + "</code></pre>")
            i = j + 1
            continue
        m = _HEAD.match(s)
        if m:
            flush()
            level, text = len(m.group(1)), m.group(2).strip()
            anchor = _slug(text)
            if anchor in seen:  # GitHub style: repeated headings get -1, -2, ...
                seen[anchor] += 1
                anchor = f"{anchor}-{seen[anchor]}"
            else:
                seen[anchor] = 0
            body.append(f'<h{level} id="{anchor}">{inline(text, base)}</h{level}>')
            i += 1
            continue
        if s in ("---", "***"):
            flush()
            body.append("<hr>")
            i += 1
            continue
        if s.startswith("|") and i + 1 < len(lines) and re.match(r"^\|?\s*:?-{3,}", lines[i + 1].strip()):
            flush()
            j = i
            block = []
            while j < len(lines) and lines[j].strip().startswith("|"):
                block.append(lines[j])
                j += 1
            body.append(_table(block, base))
            i = j
            continue
        if s.startswith(">"):
            flush()
            block = []
            while i < len(lines) and lines[i].strip().startswith(">"):
                block.append(lines[i].strip()[1:].strip())
                i += 1
            body.append("<blockquote><p>" + inline(" ".join(block), base) + "</p></blockquote>")
            continue
        if s.startswith(("- ", "* ")) or _OL.match(s):
            flush()
            ordered = bool(_OL.match(s))
            items: list[str] = []
            while i < len(lines):
                t = lines[i].strip()
                if ordered and _OL.match(t):
                    items.append(_OL.match(t).group(1))
                elif not ordered and t.startswith(("- ", "* ")):
                    items.append(t[2:])
                elif t and items and lines[i].startswith("  "):  # continuation line
                    items[-1] += " " + t
                else:
                    break
                i += 1
            tag = "ol" if ordered else "ul"
            body.append(f"<{tag}>" + "".join(f"<li>{inline(x, base)}</li>" for x in items) + f"</{tag}>")
            continue
        para.append(s)
        i += 1
    flush()
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{html.escape(title)}"
            f"</title>\n<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")
