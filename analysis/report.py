"""A study's results in one place, read from MLflow only: the fronts, the curves, a page.

`python -m analysis.report --tracking-uri URI --experiment NAME` (and the launcher, at the end
of every launch, resume and confirm stage) writes under `analysis/` of the study run: front.csv
and front.png, confirmed_front.* after a confirm stage, hypervolume.png, curves.csv and
curves.png (accuracy vs eps of each method's best trial), and report.html, one self-contained
page (images inline) with all of it, a per-method table, the evaluation warnings and the spec;
the run's description (`mlflow.note.content`) gets the front as a markdown table.
"""

from __future__ import annotations

import base64
import html
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from mlflow.tracking import MlflowClient

from analysis.costs import cost_table, describe_costs
from analysis.curves import accuracy_curves, curve_areas, min_norm_curves, plot_curves
from analysis.pareto import (
    StudyAnalysis,
    best_per_method,
    column,
    confirmed_heading,
    confirmed_table,
    front_table,
    robust_label,
    verdicts_heading,
    write_analysis,
)
from analysis.records import NOTE_TAG, STUDY_TAG, open_study, study_parser

SPEC_FILE = "spec.yaml"


def best_curves(client: MlflowClient, study: StudyAnalysis) -> tuple[pd.DataFrame, str]:
    """Accuracy vs eps of each method's best search trial: from its minimum-norm radii where
    the final evaluation kept them, else from the robust metric's attack at its eps."""
    best = best_per_method(study.search)
    for norm in ("l2", "linf"):
        curves = min_norm_curves(client, best, norm)
        if not curves.empty:
            return curves, f"min_norm_{norm}"
    metric = study.robust_metric
    attack = metric.partition("_eps")[0]
    prefix = f"final_{attack}" if best.filter(like=f"metrics.final_{attack}_eps").notna().any().any() else attack
    return accuracy_curves(best, prefix), prefix


def method_table(study: StudyAnalysis) -> pd.DataFrame:
    """Per method, its best search trial as the front table shows a trial (configuration, clean,
    search and final robust accuracy, training seconds), with certified accuracy where a model
    has one and the trial's whole compute (training and evaluation; GPU seconds on a GPU)."""
    best = best_per_method(study.search)
    table = front_table(best).drop(columns=["warn", "run_id"])
    certified = sorted(c for c in best.columns
                       if c.startswith(("metrics.final_certified_eps", "metrics.certified_eps")))
    if certified:
        table[f"certified ({robust_label(certified[0].removeprefix('metrics.'))})"] = best[certified[0]].to_numpy()
    table["compute_s"] = column(best, "metrics.compute_time_s").round(1).to_numpy()
    table["gpu_s"] = column(best, "metrics.gpu_seconds").to_numpy()
    return table.dropna(axis="columns", how="all")


def markdown_table(table: pd.DataFrame) -> str:
    """A DataFrame as a GitHub-flavoured markdown table (what MLflow renders in a description)."""
    def cell(value: object) -> str:
        return "" if pd.isna(value) else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def note(spec_name: str, run_name: str, study: StudyAnalysis) -> str:
    """The study run's description: what it is, its front, where the rest is."""
    front = front_table(study.front).drop(columns="run_id").round(3)
    parts = [f"**{spec_name}** (study run {run_name}): clean vs {robust_label(study.robust_metric)}, "
             f"{len(study.search)} search trials.",
             "", "Pareto front:", "", markdown_table(front) if not front.empty else "(no trial ran the full budget)"]
    if not study.configs.empty:
        parts += ["", f"{confirmed_heading(study)}:", "", markdown_table(confirmed_table(study.confirmed))]
        if study.verdicts is not None and study.verdicts.lines:
            parts += ["", f"{verdicts_heading(study.verdicts)}:", "", *[f"- {line}" for line in study.verdicts.lines]]
    parts += ["", "Artifacts: `analysis/report.html` (everything on one page), `analysis/front.csv` / `.png`, "
              "`analysis/confirmed_front.csv` / `.png` (after a confirm stage), `analysis/hypervolume.png`, "
              "`analysis/curves.csv` / `.png`, `spec.yaml` (the resolved spec)."]
    return "\n".join(parts)


def image(path: Path, alt: str) -> str:
    data, alt = base64.b64encode(path.read_bytes()).decode(), html.escape(alt)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'


def page(title: str, sections: list[tuple[str, str]]) -> str:
    """One self-contained HTML page: no script, no external file."""
    body = "\n".join(f"<section><h2>{html.escape(heading)}</h2>\n{content}</section>" for heading, content in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 70em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }} th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; }}
figure {{ display: inline-block; margin: 0.5em; }} figcaption {{ font-size: 0.8em; color: #555; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head>
<body><h1>{html.escape(title)}</h1>
{body}
</body></html>
"""


def write_report(client: MlflowClient, parent_run_id: str, out: Path) -> StudyAnalysis:
    """Everything `write_analysis` writes, the curves and report.html under `out`, logged to the
    study run under `analysis/`, and the run's description; returns what it found."""
    study = write_analysis(client, parent_run_id, out)
    curves, curve_label = best_curves(client, study)
    figures = [(out / "front.png", "the Pareto front")]
    if not study.configs.empty:
        figures.append((out / "confirmed_front.png", "the confirmed front"))
    if not curves.empty:
        curves.to_csv(out / "curves.csv", index=False)
        plot_curves(curves, curve_areas(curves), curve_label, out / "curves.png")
        figures.append((out / "curves.png", f"accuracy vs eps, each method's best trial ({curve_label})"))
        client.log_artifact(parent_run_id, str(out / "curves.csv"), "analysis")
        client.log_artifact(parent_run_id, str(out / "curves.png"), "analysis")
    figures.append((out / "hypervolume.png", "hypervolume of the front over the search"))
    name = client.get_run(parent_run_id).data.tags.get(STUDY_TAG, parent_run_id)
    spec = spec_text(client, parent_run_id)
    spec_name = yaml.safe_load(spec).get("name", name)
    warnings = study.trials[study.trials["eval_warning"].astype(bool)]
    sections = [
        ("Fronts", "\n".join(image(path, alt) for path, alt in figures[:2])),
        ("Pareto front", front_table(study.front).to_html(index=False, na_rep="")),
    ]
    if not study.configs.empty:
        sections.append((confirmed_heading(study), confirmed_table(study.confirmed).to_html(index=False)))
        if study.verdicts is not None and study.verdicts.lines:
            items = "".join(f"<li>{html.escape(line)}</li>" for line in study.verdicts.lines)
            sections.append((verdicts_heading(study.verdicts), f"<ul>{items}</ul>"))
    costs = cost_table(client.get_run(parent_run_id).data.metrics)
    if not costs.empty:
        sections.append(("Where the time went", costs.to_html(index=False)
                         + f"<p>{html.escape(describe_costs(client.get_run(parent_run_id).data.metrics))}</p>"))
    sections += [
        ("Best configuration per method", method_table(study).to_html(index=False, na_rep="")),
        ("Curves and hypervolume", "\n".join(image(path, alt) for path, alt in figures[2:])),
        ("Evaluation warnings", warnings[["method", "run_id", "eval_warning"]].to_html(index=False)
         if not warnings.empty else "<p>none fired</p>"),
        ("Spec", f"<pre>{html.escape(spec)}</pre>"),
    ]
    report = out / "report.html"
    report.write_text(page(f"{spec_name} ({name}): clean vs {robust_label(study.robust_metric)}", sections))
    client.log_artifact(parent_run_id, str(report), "analysis")
    client.set_tag(parent_run_id, NOTE_TAG, note(spec_name, name, study))
    return study


def spec_text(client: MlflowClient, parent_run_id: str) -> str:
    with tempfile.TemporaryDirectory() as folder:
        return Path(client.download_artifacts(parent_run_id, SPEC_FILE, folder)).read_text()


def main(argv: list[str] | None = None) -> int:
    parser = study_parser("analysis.report", __doc__)
    parser.add_argument("--out", type=Path, default=Path("analysis_out"), help="folder for the files")
    args = parser.parse_args(argv)
    client, parent = open_study(args)
    write_report(client, parent, args.out)
    print(f"wrote {args.out / 'report.html'} and the fronts, curves and hypervolume beside it; logged to run {parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
