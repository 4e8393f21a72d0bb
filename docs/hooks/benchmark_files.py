"""MkDocs hook: the files that benchmarks/RESULTS.md links to, published beside the page that includes it.

docs/benchmarks/results.md includes benchmarks/RESULTS.md whole (pymdownx.snippets), so RESULTS.md's relative links
(written for GitHub, relative to benchmarks/) are read relative to docs/benchmarks/. For every such link whose
target exists under benchmarks/ and is not a Markdown page (today one figure, results/tradeoff/tradeoff.png), this
hook adds that file to the site at the same place under benchmarks/, so the link resolves with mkdocs's strict link
checks left on. Nothing is copied into docs/. A link to anything else stays as written and fails a strict build.
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from mkdocs.structure.files import File

RESULTS = "benchmarks/RESULTS.md"  # relative to the repository root (mkdocs.yml's folder)
PAGE_FOLDER = "benchmarks"  # the folder of docs/ holding the page that includes it (docs/benchmarks/results.md)
# inline Markdown links and images: [text](target) / ![alt](target "title"), and HTML src= / href=
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*[\"'])?\s*\)|(?:src|href)=[\"']([^\"']+)[\"']")


def linked_files(root: Path) -> list[str]:
    """The relative link targets in RESULTS.md that are files under benchmarks/ (not Markdown pages)."""
    text = (root / RESULTS).read_text(encoding="utf-8")
    base = (root / RESULTS).parent.resolve()
    found = []
    for match in LINK.finditer(text):
        target = (match.group(1) or match.group(2)).split("#", 1)[0].split("?", 1)[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("/"):
            continue  # an anchor, a URL or an absolute path: not a file of the repository
        path = (base / target).resolve()
        if path.suffix.lower() == ".md" or not path.is_file() or base not in path.parents:
            continue
        found.append(path.relative_to(base).as_posix())
    return sorted(set(found))


def on_files(files, config):
    root = Path(config.config_file_path).resolve().parent
    for relative in linked_files(root):
        uri = str(PurePosixPath(PAGE_FOLDER) / relative)
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(root / "benchmarks" / relative)))
    return files
