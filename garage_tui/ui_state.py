"""The app's view state a session keeps beyond the pane: the bay tree's open nodes and a
summary of the last prompt run (``Session.ui``), and how a restore reads them back.

Only plain JSON goes in; reading tolerates anything (an old file has none, a hand-edited one
may hold junk), because view state must never keep a session from opening.
"""

from __future__ import annotations

from typing import Any

# Probabilities are rounded in the file; a re-run that moves one by more than this is reported.
SAVED_DIGITS = 6
TOLERANCE = 1e-4


def report_summary(report: Any) -> dict[str, Any] | None:
    """What the bay showed for the last run: prompt, edits, guesses (now and before), norms."""
    if report is None:
        return None
    return {
        "prompt": report.prompt,
        "model": report.model,
        "interventions": list(report.interventions),
        "guesses": [{"token": g.token, "prob": _rounded(g.prob), "before": _rounded(g.before)}
                    for g in report.guesses],
        "norms": [round(float(n), SAVED_DIGITS) for n in report.norms],
    }


def ui_state(expanded: list[str], report: Any) -> dict[str, Any]:
    """``Session.ui`` for the tree's open nodes and the last run."""
    return {"expanded": list(expanded), "report": report_summary(report)}


def expanded_of(ui: dict[str, Any] | None) -> list[str]:
    """The saved open nodes (addresses), ignoring anything that is not a list of strings."""
    expanded = (ui or {}).get("expanded")
    return [a for a in expanded if isinstance(a, str)] if isinstance(expanded, list) else []


def saved_report(ui: dict[str, Any] | None) -> dict[str, Any] | None:
    report = (ui or {}).get("report")
    return report if isinstance(report, dict) else None


def differences(saved: dict[str, Any], report: Any) -> list[str]:
    """How a re-run of the saved prompt differs from what was saved (empty: the same results).

    Compared only when the prompt, model and edits match; otherwise the two are not the same run.
    """
    if (saved.get("prompt") != report.prompt or saved.get("model") != report.model
            or saved.get("interventions") != list(report.interventions)):
        return []
    now = report_summary(report) or {}
    problems = []
    before = [(g.get("token"), g.get("prob")) for g in saved.get("guesses", []) if isinstance(g, dict)]
    after = [(g["token"], g["prob"]) for g in now["guesses"]]
    if [t for t, _ in before] != [t for t, _ in after]:
        problems.append(f"guesses were {[t for t, _ in before]}, now {[t for t, _ in after]}")
    elif any(isinstance(p, (int, float)) and q is not None and abs(p - q) > TOLERANCE
             for (_, p), (_, q) in zip(before, after, strict=True)):
        problems.append("guess probabilities moved")
    return problems


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), SAVED_DIGITS)
