"""MkDocs hook: the parameter reference, generated from params.yaml at build time.

The page docs/parameters.md holds the marker `<!-- params.yaml -->`; this hook replaces it with one
table per section of params.yaml: each key, its shipped value and its comment. The comments are
written once, in params.yaml; nothing here copies them. A key without a comment shows a dash.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

MARKER = "<!-- params.yaml -->"
PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<rest>.*)$")
# Where each section is explained in prose (pages of this site).
SEE = {
    "data": "[Data](data.md)",
    "split": "[Data: the split](data.md#the-split)",
    "model": "[Models](models.md)",
    "train": "[Training](training.md)",
    "evaluate": "[The pipeline](pipeline.md)",
    "plot": "[Experiments: looking at a run](experiments.md#looking-at-a-run)",
    "export": "[Deploy](deploy.md) and [int8](int8.md)",
}

# params.yaml's comments point at sections of the README that now live on these pages.
DOCS_SECTIONS = {"Models": "models.md", "the int8 gate": "int8.md#the-int8-gate"}


def split_comment(text: str) -> tuple[str, str]:
    """`value  # comment` -> (value, comment); a `#` inside quotes or braces is no comment here."""
    match = re.search(r"(^|\s)#\s?(.*)$", text)
    if not match:
        return text.strip(), ""
    return text[: match.start()].strip(), match.group(2).strip()


def read_params(path: Path) -> tuple[str, list[tuple[str, list[list[str]]]]]:
    """The file's heading comment, and per section its keys as [key, value as written, comment], in
    file order. A comment line at a key's indent belongs to the key below it; one indented deeper,
    or on a list item, continues the comment of the key above."""
    heading: list[str] = []
    sections: list[tuple[str, list[list[str]]]] = []
    keys: list[list[str]] = []
    pending: list[str] = []  # comment lines waiting for the key below them
    for line in path.read_text().splitlines():
        match = KEY.match(line)
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if match and not match["indent"]:
            keys, pending = [], []
            sections.append((match["key"], keys))
        elif match:
            value, comment = split_comment(match["rest"])
            keys.append([match["key"], value, " ".join([*pending, comment]).strip()])
            pending = []
        elif not sections:
            if stripped.startswith("#"):
                heading.append(stripped.lstrip("#").strip())
        elif stripped.startswith("#") and (not keys or indent <= 2):
            pending.append(stripped.lstrip("#").strip())
        elif "#" in line and keys:
            _, comment = split_comment(line)
            keys[-1][2] = f"{keys[-1][2]} {comment}".strip()
    return " ".join(heading), sections


def shipped(written: str, value: object) -> str:
    """A value as params.yaml writes it; a block (a list over several lines) as YAML writes it on
    one line. In backticks."""
    if written:
        return f"`{written}`"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("...").strip()
    return f"`{text}`"


def cell(text: str) -> str:
    """Text as a table cell: pipes escaped, a pointer to a docs section made a link to it."""
    if not text:
        return "—"
    for name, target in DOCS_SECTIONS.items():
        text = text.replace(f"docs: {name}", f"see [{name}]({target})")
    return text.replace("|", "\\|")


def render(path: Path = PARAMS) -> str:
    values = yaml.safe_load(path.read_text())
    heading, sections = read_params(path)
    out = [f"`params.yaml` begins: *{heading}*", ""] if heading else []
    for section, keys in sections:
        out += [f"## `{section}`", ""]
        if section in SEE:
            out += [f"Explained in: {SEE[section]}.", ""]
        out += ["| key | shipped value | comment in params.yaml |", "| --- | --- | --- |"]
        for key, written, comment in keys:
            value = cell(shipped(written, values[section][key]))
            out.append(f"| `{section}.{key}` | {value} | {cell(comment)} |")
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:  # MkDocs calls hooks by these names
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())


if __name__ == "__main__":  # print the generated Markdown: `uv run python docs/hooks/params.py`
    print(render())
