"""The README and docs/: size, links that resolve, the Python example runs, nothing dangles.

The README's ```python blocks run in a fresh interpreter in which `transformer_lens` and
`sae_lens` cannot be imported, so the example also shows the library works without them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from saekit.dictionaries import DICTIONARIES
from saekit.dictionaries.config import SECTIONS, SAEConfig

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
DOC_PATH = re.compile(r"\bdocs/[\w./-]+\.md")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_readme_fits_on_a_page() -> None:
    assert len(README.read_bytes()) <= 15_000


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    targets = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]
    assert targets or page.name != "README.md", "no links at all?"
    for target in targets:
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in anchors(dest), f"{page.name}: no heading #{anchor} in {dest.name}"


def test_code_points_only_to_docs_that_exist() -> None:
    cited = {
        (str(py.relative_to(ROOT)), ref)
        for py in [*ROOT.glob("saekit/**/*.py"), *ROOT.glob("tests/**/*.py")]
        for ref in DOC_PATH.findall(py.read_text())
    }
    assert len(cited) >= 19  # the citations of the specification, now pages of docs/
    missing = [f"{src}: {ref}" for src, ref in cited if not (ROOT / ref).is_file()]
    assert not missing, missing
    assert not [src for src, _ in cited if "methods §" in (ROOT / src).read_text()]


def test_every_method_has_a_page_listing_its_options() -> None:
    table = README.read_text()
    hints = SAEConfig.__annotations__
    for method in DICTIONARIES:
        page = ROOT / "docs" / "methods" / f"{method}.md"
        assert page.is_file() and f"(docs/methods/{method}.md)" in table, method
        if method in SECTIONS:
            section = SAEConfig(method=method).options()  # type: ignore[arg-type]
            for field in section.__dataclass_fields__:
                assert f"`{field}`" in page.read_text(), f"{method}.md: option {field}"
            assert method in hints


def test_the_two_commands_are_their_own_blocks() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert "make demo\n" in blocks and "make test\n" in blocks


BLOCK_IMPORTS = """
import importlib.abc, sys
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("transformer_lens", "sae_lens"):
            raise ImportError(f"{name} is blocked: the example must run without it")
sys.meta_path.insert(0, _Blocked())
"""


@pytest.mark.e2e
def test_readme_python_example_runs_without_transformer_lens() -> None:
    code = "\n".join(re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S))
    assert "saekit.fit(" in code and "saekit.evaluate(" in code and "saekit.steer(" in code
    lines = [ln for ln in code.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(lines) < 10  # train, evaluate and steer in under ten lines
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(BLOCK_IMPORTS) + code],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    fvu, continuation = out.stdout.strip().split("\n", 1)
    assert 0 < float(fvu) < 1 and continuation.strip()
