"""README.md and docs/: the generated blocks match the committed results; the site builds strictly.

The result tables, claims, sweep table and stage-time summary of README.md and docs/*.md sit between
``<!-- BEGIN generated:NAME -->`` markers and are written by ``make docs-results``
(cecl/docs_blocks.py) from files git holds. These tests fail when a committed block differs from
what those files generate, check the renderer on doctored inputs, and build the site with
``mkdocs build --strict``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cecl import docs_blocks
from tests.committed import committed_tree

ROOT = Path(__file__).resolve().parents[1]
README_LIMIT = 210  # "at most about 200 lines"
NEEDED = ("prerequisites", "results-tables-plain", "paper-vs-run")


# What the generated blocks are made from, and the files holding them: read as git's HEAD records them
# (tests/committed.py), so that a user's own rerun, which rewrites the results, leaves these tests green.
COMMITTED = ("probe", "floors", "reports", "sweep", "docs", "profiles", "transfer", "dvc.lock", "README.md")


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """README, docs and the results they are generated from, as committed (git HEAD), in a temp folder."""
    root = committed_tree(ROOT, tmp_path_factory.mktemp("committed") / "repo", COMMITTED)
    if not (root / "reports" / "claims.md").is_file() or not any((root / "probe").rglob("metrics.json")):
        pytest.skip("the run's result files are not committed here")
    for curves in (root / "transfer").rglob("*.csv"):
        curves.unlink()
    return root


def _copy_results(committed: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the committed tree."""
    return Path(shutil.copytree(committed, tmp_path / "repo"))


def test_the_readme_is_short_and_has_every_generated_block() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_LIMIT
    assert set(NEEDED) <= set(docs_blocks.blocks(text)), "README.md lacks a generated block"
    for name, body in docs_blocks.blocks(text).items():
        assert body.strip(), f"README.md's generated block {name} is empty (make docs-results)"


def test_the_committed_blocks_are_what_the_committed_results_generate(committed: Path) -> None:
    stale = []
    for path in docs_blocks.doc_files(committed):
        text = path.read_text(encoding="utf-8")
        if docs_blocks.blocks(text) and docs_blocks.render_file(text, committed) != text:
            stale.append(str(path.relative_to(committed)))
    assert not stale, f"generated blocks differ from the committed results in {stale}: run make docs-results"


def test_a_doctored_metrics_file_changes_the_table_and_check_names_the_stale_files(
    committed: Path, tmp_path: Path
) -> None:
    root = _copy_results(committed, tmp_path)
    assert docs_blocks.update(root, check=True) == [], "the copy should start up to date"
    metrics = next(p for p in sorted((root / "probe").rglob("metrics.json")) if "cecl" in p.parts)
    data = json.loads(metrics.read_text())
    key = "unbiased_accuracy" if "unbiased_accuracy" in data["test"] else "top1_accuracy"
    before = docs_blocks.results_tables(root, linked=False)
    data["test"][key] = 0.0 if data["test"][key] > 0.5 else 1.0
    metrics.write_text(json.dumps(data))
    after = docs_blocks.results_tables(root, linked=False)
    assert after != before
    changed = [line for line in after.splitlines() if line not in before.splitlines()]
    assert changed and all(line.startswith("| cecl") for line in changed), changed
    result = subprocess.run(
        [sys.executable, "-m", "cecl.docs_blocks", "--root", str(root), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 1 and "stale: README.md" in result.stdout, result.stdout + result.stderr
    assert docs_blocks.update(root) and docs_blocks.update(root, check=True) == []
    readme_block = docs_blocks.blocks((root / "README.md").read_text())["results-tables-plain"]
    assert readme_block.strip() == after.strip()


def test_a_changed_profile_changes_the_cost_table_and_check_names_profiles_md(
    committed: Path, tmp_path: Path
) -> None:
    root = _copy_results(committed, tmp_path)
    assert docs_blocks.update(root, check=True) == [], "the copy should start up to date"
    before = docs_blocks.profile_costs(root)
    cpu = next(line for line in before.splitlines() if line.startswith("| `cpu` |"))
    assert len(before.splitlines()) == 2 + len(list((root / "profiles").glob("*.yaml")))
    profile = root / "profiles" / "cpu.yaml"
    seven = profile.read_text().replace("seeds: [0, 1, 2, 3, 4]", "seeds: [0, 1, 2, 3, 4, 5, 6]", 1)
    profile.write_text(seven)
    after = docs_blocks.profile_costs(root)
    changed = [line for line in after.splitlines() if line not in before.splitlines()]
    assert len(changed) == 1 and changed[0].startswith("| `cpu` |") and changed[0] != cpu
    # 67 stages: 1 prepare + 4 methods x 7 seeds x (pretrain, probe) + 1 pixel floor + 7 init floors + 2
    assert "| `cpu` | 67 |" in changed[0]
    assert [p.name for p in docs_blocks.update(root, check=True)] == ["profiles.md"]
    (root / "profiles" / "cpu.yaml").unlink()
    for other in (root / "profiles").glob("*.yaml"):
        other.unlink()
    with pytest.raises(ValueError, match="no profiles"):
        docs_blocks.profile_costs(root)


def test_a_doctored_claims_file_changes_the_plain_statement(committed: Path, tmp_path: Path) -> None:
    root = _copy_results(committed, tmp_path)
    claims = root / "reports" / "claims.md"
    claims.write_text(claims.read_text().replace("| reproduces ", "| contradicts the paper ", 1))
    summary = docs_blocks.claims_summary(root)
    assert "contradicts the paper" in summary and summary != docs_blocks.claims_summary(committed)
    claims.write_text("## Claims\n\nNo tables.\n")
    with pytest.raises(ValueError, match="no claim tables"):
        docs_blocks.claims_summary(root)


def test_an_unknown_block_name_is_an_error(tmp_path: Path) -> None:
    text = "<!-- BEGIN generated:nope -->\n<!-- END generated:nope -->\n"
    with pytest.raises(ValueError, match="unknown generated block 'nope'"):
        docs_blocks.render_file(text, tmp_path)


def test_stage_times_are_recorded_from_a_repro_log_and_rendered(tmp_path: Path) -> None:
    log = "\n".join(
        [
            "[repro] plan: 3 stages, about 0.001 H100-hours",
            "Running stage 'prepare@bm':",
            "> python -m cecl.stage prepare --dataset bm",
            "[prepare] done in 1.5s",
            "Running stage 'pretrain@bm-cecl-0':",
            "[pretrain] done in 10.0s",
            "Running stage 'pretrain@bm-ce-0':",
            "[pretrain] done in 6.0s",
            "[repro] 3 stage(s) ran, 0 reused (up to date), 0 restored from the run-cache in 21 s",
            "  ran      prepare@bm (2.5 s): changed outs (data/bm: not in cache)",
            "  ran      pretrain@bm-cecl-0 (11.0 s): an upstream stage changed its outputs",
            "  ran      pretrain@bm-ce-0 (7.0 s): an upstream stage changed its outputs",
        ]
    )
    (tmp_path / "repro.log").write_text(log)
    (tmp_path / "second.log").write_text("[repro] 0 stage(s) ran, 3 reused (up to date), 0 restored in 4 s\n")
    (tmp_path / "capped.log").write_text(log.replace("in 21 s", "in 30 s").replace("(11.0 s)", "(20.0 s)"))
    path = docs_blocks.record_times(
        tmp_path,
        tmp_path / "repro.log",
        "test CPU, 2 cores",
        "fresh clone",
        tmp_path / "second.log",
        also=[("AVX2 kernels forced", tmp_path / "capped.log")],
    )
    data = json.loads(path.read_text())
    assert [k["kind"] for k in data["kinds"]] == ["prepare", "pretrain"]
    pretrain = data["kinds"][1]
    assert pretrain == {
        "kind": "pretrain",
        "n": 2,
        "wall": [7.0, 11.0],
        "wall_sum": 18.0,
        "in_stage": [6.0, 10.0],
        "overhead_mean": 1.0,
    }
    block = docs_blocks.stage_times(tmp_path)
    assert "test CPU, 2 cores" in block and "[repro] 3 stage(s) ran" in block
    assert (
        "pretrain  n=  2 wall    7.0-  11.0 s (sum    18.0), in-stage    6.0-  10.0 s, overhead mean 1.0 s"
        in block
    )
    assert "a second `python -m cecl.repro` right after: 0 stage(s) ran, 3 reused, in 4 s\n" in block
    assert block.rstrip().endswith(
        "AVX2 kernels forced: 3 stage(s) ran, 0 reused (up to date), 0 restored from the run-cache in 30 s"
        " (sums: prepare 2.5, pretrain 27.0)\n```"
    )


def test_the_site_builds_strictly_and_a_broken_link_fails_it(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.is_file():
        pytest.skip("mkdocs is not installed (make install)")
    env_cmd = [str(mkdocs), "build", "--strict", "--site-dir"]
    built = subprocess.run([*env_cmd, str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "evaluation.html").is_file()
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy2(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    shutil.copy2(ROOT / "CHANGELOG.md", copy / "CHANGELOG.md")
    index = copy / "docs" / "index.md"
    index.write_text(index.read_text() + "\n[gone](no-such-page.md)\n")
    broken = subprocess.run([*env_cmd, str(tmp_path / "broken")], cwd=copy, capture_output=True, text=True)
    assert broken.returncode != 0 and "no-such-page.md" in broken.stdout + broken.stderr


def _git_repo(path: Path) -> Path:
    path.mkdir()
    for args in (["init", "-q"], ["config", "user.email", "t@t"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=path, check=True)
    return path


def test_the_committed_tree_is_heads_not_the_working_trees(tmp_path: Path) -> None:
    """A rerun's rewritten results are invisible to the freshness tests; without git, the working tree."""
    repo = _git_repo(tmp_path / "repo")
    (repo / "probe" / "x").mkdir(parents=True)
    (repo / "probe" / "x" / "metrics.json").write_text('{"test": 0.7}')
    (repo / "README.md").write_text("committed\n")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "results"], cwd=repo, check=True)
    (repo / "probe" / "x" / "metrics.json").write_text('{"test": 0.6}')  # what a rerun does
    (repo / "probe" / "y").mkdir()
    (repo / "probe" / "y" / "metrics.json").write_text('{"test": 0.5}')  # a new, untracked output
    got = committed_tree(repo, tmp_path / "head", ["probe", "README.md", "sweep"])
    assert (got / "probe" / "x" / "metrics.json").read_text() == '{"test": 0.7}'
    assert not (got / "probe" / "y").exists() and not (got / "sweep").exists()
    assert (got / "README.md").read_text() == "committed\n"
    shutil.rmtree(repo / ".git")
    plain = committed_tree(repo, tmp_path / "plain", ["probe", "README.md"])
    assert (plain / "probe" / "x" / "metrics.json").read_text() == '{"test": 0.6}'
    assert (plain / "probe" / "y" / "metrics.json").is_file()


def test_paper_vs_run_reads_the_verdicts_and_states_only_the_abstracts_number(
    committed: Path, tmp_path: Path
) -> None:
    root = _copy_results(committed, tmp_path)
    block = docs_blocks.paper_vs_run(root)
    assert "22.9% improvement" in block and "SupContrast" in block and "ReBias" in block
    rows = docs_blocks.claim_verdicts((root / "reports" / "claims.md").read_text())
    assert rows and {r["verdict"] for r in rows} <= {
        "reproduces",
        "contradicts the paper",
        "not resolved at this n",
    }
    assert all(f"| {r['verdict']} |" in block for r in rows)
    # claims.md's columns being reworked: a 'verdict' column (instead of 'direction') is read the same way
    claims = root / "reports" / "claims.md"
    claims.write_text(claims.read_text().replace("| direction ", "| verdict   "))
    assert docs_blocks.claim_verdicts(claims.read_text()) == rows
    claims.write_text(claims.read_text().replace("| 95% CI ", "| interval "))
    with pytest.raises(ValueError, match="CI column"):
        docs_blocks.claim_verdicts(claims.read_text())


def test_the_docs_images_are_report_htmls_and_a_changed_plot_is_stale(
    committed: Path, tmp_path: Path
) -> None:
    root = _copy_results(committed, tmp_path)
    images = docs_blocks.report_images(root)
    assert set(images) == {"convergence.png", "heatmap.png"}
    assert all(data.startswith(b"\x89PNG\r\n\x1a\n") for data in images.values())
    for name, data in images.items():
        assert (root / "docs" / "assets" / name).read_bytes() == data, f"docs/assets/{name} is stale"
    (root / "docs" / "assets" / "heatmap.png").write_bytes(b"not the plot")
    assert [p.name for p in docs_blocks.update(root, check=True)] == ["heatmap.png"]
    assert (
        docs_blocks.update(root)
        and (root / "docs" / "assets" / "heatmap.png").read_bytes() == images["heatmap.png"]
    )
