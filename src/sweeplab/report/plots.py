"""Plots of a study, each as a self-contained HTML (plotly) and a PNG made without a browser.

Optuna's own plot functions where they exist (the matplotlib ones are experimental but need no
browser, unlike plotly's PNG export); learning curves and importances are drawn here.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplab.outputs import atomic_path
from sweeplab.report.table import metric_name

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

# matplotlib's tab10, as hex so plotly takes the same colours
BLUE, ORANGE, RED, GRAY = "#1f77b4", "#ff7f0e", "#d62728", "#7f7f7f"
RECIPE_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
STATE_STYLE = {  # (colour, matplotlib linestyle, plotly dash, legend label)
    "COMPLETE": (BLUE, "-", "solid", "complete"),
    "PRUNED": (ORANGE, "--", "dash", "pruned (x: where)"),
    "FAIL": (GRAY, ":", "dot", "failed"),
    "RUNNING": (GRAY, "-.", "dashdot", "running"),
}


@dataclass
class Plot:
    stem: str
    title: str
    note: str | None = None  # why it was skipped; None when both files were written


def save_png(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def save_html(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.write_html(tmp, include_plotlyjs=True, full_html=True)  # opens offline, ~5 MB each


def figure_of(axes: Any) -> Any:
    """Optuna's matplotlib plots return an Axes or an array of them."""
    import numpy as np

    return np.ravel(np.asarray(axes, dtype=object))[0].figure


def importances(study: optuna.Study, n_complete: int) -> tuple[dict[str, float], str]:
    """fANOVA needs scikit-learn, which sweeplab does not pin; PED-ANOVA needs nothing more."""
    from optuna.importance import (
        FanovaImportanceEvaluator,
        PedAnovaImportanceEvaluator,
        get_param_importances,
    )

    if importlib.util.find_spec("sklearn") is not None:
        evaluator, name = FanovaImportanceEvaluator(seed=0), "fANOVA"
    else:
        # at least ~5 trials in the top quantile keep PED-ANOVA stable; small sweeps have few
        quantile = min(0.5, max(0.1, 5 / n_complete))
        evaluator, name = (
            PedAnovaImportanceEvaluator(target_quantile=quantile),
            f"PED-ANOVA, top {quantile:.0%}",
        )
    return get_param_importances(study, evaluator=evaluator), name


def importance_figures(values: dict[str, float], method: str, metric: str) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    keys = sorted(values, key=values.get)  # largest on top
    title = f"Hyperparameter importance for {metric} ({method})"
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(keys) + 1.5))
    bars = ax.barh(keys, [values[k] for k in keys], color=BLUE)
    ax.bar_label(bars, fmt="%.2f", padding=3)
    ax.set(xlabel="importance (sums to 1)", title=title, xlim=(0, max(values.values()) * 1.15 or 1))
    ax.grid(axis="x", alpha=0.3)
    html = go.Figure(go.Bar(x=[values[k] for k in keys], y=keys, orientation="h", marker_color=BLUE))
    html.update_layout(title=title, xaxis_title="importance (sums to 1)", template="plotly_white")
    return fig, html


def curves(trials: list[FrozenTrial]) -> list[tuple[FrozenTrial, list[int], list[float]]]:
    out = []
    for t in sorted(trials, key=lambda t: t.number):
        points = sorted((s, v) for s, v in t.intermediate_values.items() if math.isfinite(v))
        if points:
            out.append((t, [s for s, _ in points], [v for _, v in points]))
    return out


def curve_style(t: FrozenTrial, best: FrozenTrial | None, recipes: list[str]) -> tuple[str, float, str]:
    """(colour, width, label): the best stands out, recipes get their own colour, the rest by state."""
    colour, _, _, label = STATE_STYLE.get(t.state.name, STATE_STYLE["RUNNING"])
    recipe = t.user_attrs.get("recipe")
    if best is not None and t.number == best.number:
        return RED, 2.8, f"best: trial {t.number}{f' {recipe}' if recipe else ''} ({best.value:.4f})"
    if recipe:
        return RECIPE_COLORS[recipes.index(recipe) % len(RECIPE_COLORS)], 2.0, f"trial {t.number}: {recipe}"
    return colour, 1.2, label


def learning_curves(
    study: optuna.Study, trials: list[FrozenTrial], best: FrozenTrial | None
) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go
    from matplotlib.ticker import MaxNLocator

    metric = metric_name(study)
    data = curves(trials)
    recipes = list(dict.fromkeys(t.user_attrs["recipe"] for t, _, _ in data if t.user_attrs.get("recipe")))
    title = f"Learning curves: {metric} per validation ({len(data)} trials)"
    fig, ax = plt.subplots(figsize=(10, 6))
    html = go.Figure()
    seen: set[str] = set()
    ordered = sorted(data, key=lambda d: best is not None and d[0].number == best.number)  # best on top
    for t, steps, values in ordered:
        colour, width, label = curve_style(t, best, recipes)
        _, style, dash, _ = STATE_STYLE.get(t.state.name, STATE_STYLE["RUNNING"])
        plain = width < 2
        ax.plot(
            steps,
            values,
            linestyle=style,
            color=colour,
            linewidth=width,
            alpha=0.6 if plain else 1.0,
            marker="o",
            markersize=2.5,
            label=None if label in seen else label,
            zorder=3 if plain else 4,
        )
        seen.add(label)
        if t.state.name == "PRUNED":
            ax.plot(steps[-1], values[-1], marker="x", markersize=9, mew=2, color=colour, zorder=5)
        end = (steps[-1], values[-1])
        ax.annotate(
            str(t.number),
            end,
            xytext=(7, 0),
            textcoords="offset points",
            fontsize=7,
            color=colour,
            va="center",
        )
        params = "<br>".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()
        )
        n = len(steps)
        html.add_trace(
            go.Scatter(
                x=steps,
                y=values,
                mode="lines+markers",
                name=" ".join(filter(None, [f"trial {t.number}", t.user_attrs.get("recipe"), t.state.name])),
                line={"color": colour, "dash": dash, "width": width},
                marker={
                    "symbol": ["circle"] * (n - 1) + ["x" if t.state.name == "PRUNED" else "circle"],
                    "size": [4] * (n - 1) + [11 if t.state.name == "PRUNED" else 4],
                },
                opacity=0.7 if plain else 1.0,
                hovertemplate=f"trial {t.number} ({t.state.name})<br>step %{{x}}<br>{metric} %{{y:.4f}}"
                f"<br>{params}<extra></extra>",
            )
        )
    ax.set(xlabel="optimizer step", ylabel=metric, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=9)
    html.update_layout(title=title, xaxis_title="optimizer step", yaxis_title=metric, template="plotly_white")
    return fig, html


def optuna_plots(name: str, study: optuna.Study, **kwargs: Any) -> tuple[Any, Any]:
    """The matplotlib and plotly versions of optuna.visualization.<name>."""
    import matplotlib.pyplot as plt
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl

    with plt.rc_context({"figure.figsize": (10, 6), "axes.titlesize": 12}):
        fig = figure_of(getattr(vis_mpl, name)(study, **kwargs))
    if name == "plot_slice":  # optuna packs one panel per param into 10 inches; give each room
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        fig.set_size_inches(max(10, 3.2 * len(fig.axes)), 4.8)
        for ax in fig.axes:
            ax.tick_params(axis="x", labelrotation=30)
            if ax.get_xscale() == "log":  # 1-2-5 ticks written like lrs are (2e-4): a decade is too coarse
                ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}".replace("e-0", "e-")))
                ax.xaxis.set_minor_formatter(NullFormatter())
    return fig, getattr(vis, name)(study, **kwargs)


def write_plots(study: optuna.Study, trials: list[FrozenTrial], best: FrozenTrial | None, out: Path):
    """Every plot that makes sense for this study; the rest come back with a note saying why not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    metric = metric_name(study)
    n_complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    importance: tuple[dict[str, float], str] | None = None

    def optuna_pair(name: str) -> tuple[Any, Any]:
        return optuna_plots(name, study, target_name=metric)

    def importance_pair() -> tuple[Any, Any]:
        nonlocal importance
        importance = importances(study, n_complete)
        return importance_figures(*importance, metric)

    # stem, title, COMPLETE trials needed, (matplotlib figure, plotly figure)
    specs: list[tuple[str, str, int, Callable[[], tuple[Any, Any]]]] = [
        ("learning_curves", "Learning curves", 0, lambda: learning_curves(study, trials, best)),
        ("optimization_history", "Optimization history", 1, lambda: optuna_pair("plot_optimization_history")),
        ("param_importances", "Hyperparameter importances", 2, importance_pair),
        ("parallel_coordinate", "Parallel coordinates", 2, lambda: optuna_pair("plot_parallel_coordinate")),
        ("slice", "Slice: each parameter against the objective", 1, lambda: optuna_pair("plot_slice")),
    ]
    multi = len(study.directions) > 1
    if multi:  # no single target: the front instead of the plots of one value
        from sweeplab.report.pareto import pareto_plots

        specs = [specs[0], ("pareto_front", "Pareto front plot", 1, lambda: pareto_plots(study))]
    plots = []
    for stem, title, needed, make in specs:
        plot = Plot(stem, title)
        if stem == "learning_curves" and multi and not curves(trials):
            plot.note = "Optuna prunes single-objective studies only, so no trial reported values on the way"
        elif stem == "pareto_front" and len(study.directions) > 3:
            plot.note = f"Optuna draws the front of 2 or 3 objectives, the study has {len(study.directions)}"
        elif stem == "learning_curves" and not curves(trials):
            plot.note = f"no trial reported {metric} yet"
        elif n_complete < needed:
            plot.note = (
                f"needs {needed} COMPLETE trial{'s' if needed > 1 else ''}, the study has {n_complete}"
            )
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    fig, html = make()
                save_png(fig, out / f"{stem}.png")
                save_html(html, out / f"{stem}.html")
            except Exception as err:  # one plot that cannot be drawn must not cost the whole report
                plot.note = f"could not be drawn: {type(err).__name__}: {err}"
                plt.close("all")
        if plot.note:  # no stale plot from an earlier report under the same name
            for suffix in (".png", ".html"):
                (out / f"{stem}{suffix}").unlink(missing_ok=True)
        plots.append(plot)
    return plots, importance
