"""A throwaway repository for the generated-block tools: docs/ with one page holding a block."""

from pathlib import Path


def page_with_block(root: Path, name: str, begin: str, end: str) -> tuple[Path, Path, Path]:
    """(docs, an empty run folder, docs/<name> holding 'old' between `begin` and `end`)."""
    docs, run = root / "docs", root / "run"
    docs.mkdir()
    run.mkdir()
    page = docs / name
    page.write_text(f"intro\n{begin}\nold\n{end}\nrest\n")
    return docs, run, page
