"""What grading writes: one feedback page per student and notebook, the problems pages, the wide grades CSV, a
summary and the scores (:func:`write_reports` writes them all under one folder)."""
from __future__ import annotations

import csv
import html
import json
import re
import shutil
import statistics
from collections import Counter
from pathlib import Path

from .results import Result

STYLE = ("body{font-family:sans-serif;max-width:60rem;margin:2rem auto;line-height:1.4}"
         "table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:.4rem;text-align:left;"
         "vertical-align:top}.pass{color:#1a7f37}.fail{color:#b3261e}pre{background:#f6f8fa;padding:.5rem;"
         "white-space:pre-wrap;max-height:20rem;overflow:auto}")


def feedback_html(result: Result) -> str:
    """The learner's feedback: per exercise pass/fail, points, the author's message, the visible tests' output.
    Everything shown is escaped; nothing of the hidden tests is in a Result."""
    e = html.escape
    rows = []
    for ex in result.exercises:
        status = '<span class="pass">passed</span>' if ex.passed else '<span class="fail">failed</span>'
        output = f"<pre>{e(ex.output)}</pre>" if ex.output.strip() else ""
        rows.append(f"<tr><td>{e(ex.name)}</td><td>{status}</td>"
                    f"<td>{ex.points:g} / {ex.max_points:g}</td><td>{e(ex.message)}{output}</td></tr>")
    notes = "".join(f"<li>{e(n)}</li>" for n in result.notes)
    problem = f"<p class='fail'><b>Not graded:</b> {e(result.problem)}</p>" if result.problem else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(result.notebook)}: feedback</title>"
            f"<style>{STYLE}</style></head><body><h1>{e(result.notebook)}</h1>"
            f"<p>Student: <b>{e(result.student)}</b>. Score: <b>{result.score:g} / {result.max_score:g}</b>.</p>"
            f"{problem}{f'<ul>{notes}</ul>' if notes else ''}"
            "<table><tr><th>exercise</th><th>result</th><th>points</th><th>feedback (and the output of the visible "
            f"tests in your notebook)</th></tr>{''.join(rows)}</table></body></html>\n")


def problems_html(student: str, problems: list[str]) -> str:
    """A page for a student whose folder held files that are not course notebooks."""
    items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>submission problems</title>"
            f"<style>{STYLE}</style></head><body><h1>Submission problems: {html.escape(student)}</h1>"
            f"<p>These files were not graded:</p><ul>{items}</ul></body></html>\n")


_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~&])")


def csv_cell(value: str) -> str:
    """A CSV cell that a spreadsheet shows as text: a leading formula character is quoted away (OWASP's CSV
    injection advice), line breaks become spaces."""
    value = value.replace("\r", " ").replace("\n", " ")
    return "'" + value if value.startswith(_FORMULA) else value


def md_text(value: str) -> str:
    """Text shown literally in Markdown: every punctuation character that Markdown or HTML could act on is
    backslash-escaped, line breaks become spaces."""
    return _MARKDOWN.sub(r"\\\1", value.replace("\r", " ").replace("\n", " "))


def write_csv(results: list[Result], students: list[str], path: Path) -> Path:
    """One row per student; per notebook a total column and one column per exercise (empty: not submitted)."""
    notebooks: dict[str, list[str]] = {}
    for r in sorted(results, key=lambda r: r.notebook):
        names = notebooks.setdefault(r.notebook, [])
        for ex in r.exercises:
            if ex.name not in names:
                names.append(ex.name)
    header = ["student"]
    for nb, exercises in notebooks.items():
        header += [nb] + [f"{nb}:{ex}" for ex in exercises]
    header.append("total")
    by_key = {(r.student, r.notebook): r for r in results}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([csv_cell(h) for h in header])
        for student in sorted(students):
            row, total = [student], 0.0
            for nb, exercises in notebooks.items():
                r = by_key.get((student, nb))
                if r is None:
                    row += [""] * (1 + len(exercises))
                    continue
                points = {ex.name: ex.points for ex in r.exercises}
                row += [f"{r.score:g}"] + [f"{points[ex]:g}" if ex in points else "" for ex in exercises]
                total += r.score
            writer.writerow([csv_cell(c) for c in row + [f"{total:g}"]])
    return path


def write_summary(results: list[Result], out: Path, rejected: list[str] = ()) -> Path:
    """summary.md (per notebook: submissions, mean and median score; the exercises most often failed; what was
    not graded, escaped) and score_distribution.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    notebooks = sorted({r.notebook for r in results})
    if not notebooks:
        (out / "summary.md").write_text("# Grading summary\n\nNothing was graded.\n\n" +
                                         "".join(f"- {md_text(item)}\n" for item in rejected))
        return out / "summary.md"
    lines = ["# Grading summary", "", "| notebook | submissions | mean | median | max points |", "|---|---|---|---|---|"]
    for nb in notebooks:
        scores = [r.score for r in results if r.notebook == nb]
        top = max(r.max_score for r in results if r.notebook == nb)
        lines.append(f"| {nb} | {len(scores)} | {statistics.mean(scores):.2f} | {statistics.median(scores):.2f} "
                     f"| {top:g} |")
    failed = Counter((r.notebook, ex.name) for r in results for ex in r.exercises if not ex.passed)
    attempts = Counter((r.notebook, ex.name) for r in results for ex in r.exercises)
    lines += ["", "## Exercises most often failed", "", "| notebook | exercise | failed |", "|---|---|---|"]
    for (nb, ex), count in failed.most_common(10):
        lines.append(f"| {nb} | {ex} | {count} of {attempts[nb, ex]} |")
    not_graded = [f"{r.student}/{r.notebook}: {r.problem}" for r in results if r.problem] + list(rejected)
    if not_graded:
        lines += ["", "## Not graded", ""] + [f"- {md_text(item)}" for item in not_graded]
    fig, axes = plt.subplots(1, len(notebooks), figsize=(4.5 * len(notebooks), 3.2), squeeze=False)
    for ax, nb in zip(axes[0], notebooks):
        ax.hist([r.score for r in results if r.notebook == nb], bins=10, color="#2a7ab9")
        ax.set(title=nb, xlabel="score", ylabel="submissions")
    fig.tight_layout()
    fig.savefig(out / "score_distribution.png", dpi=100)
    plt.close(fig)
    lines += ["", "![score distribution](score_distribution.png)", ""]
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    return path


def write_reports(results: list[Result], students: list[str], problems_by_student: dict[str, list[str]],
                  rejected: list[str], out: Path) -> None:
    """Feedback pages, problems pages, grades.csv, summary.md and scores.json under ``out``."""
    feedback_dir = out / "feedback"
    shutil.rmtree(feedback_dir, ignore_errors=True)
    for r in results:
        target = feedback_dir / r.student / f"{r.notebook}.html"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(feedback_html(r), encoding="utf-8")
    for student, items in problems_by_student.items():
        (feedback_dir / student).mkdir(parents=True, exist_ok=True)
        (feedback_dir / student / "problems.html").write_text(problems_html(student, items), encoding="utf-8")
    if rejected:
        (out / "problems.html").write_text(problems_html("this batch (no student)", rejected), encoding="utf-8")
    elif (out / "problems.html").exists():
        (out / "problems.html").unlink()
    write_csv(results, students, out / "grades.csv")
    write_summary(results, out, rejected)
    summary = {f"{r.student}/{r.notebook}": {**{e.grade_id: e.points for e in r.exercises}, "total": r.score}
               for r in results}
    (out / "scores.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
