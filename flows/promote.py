"""Prefect flow `promote`: move the `champion` alias to an evaluated registry version when it beats
the baselines of its own evaluation and is at least as good as the current champion (mvg.promotion's
rule; a first candidate must beat the baselines too), and record the decision and its reason, with
the figures, as version tags (`promotion`: champion or rejected, `promotion.reason`).

It reads only what the evaluate flow recorded on the versions (`eval.<dataset>.<metric>` and
`baseline.<dataset>.<metric>` tags), so it can run on its own, e.g. with another rule, without
evaluating anything again. A version evaluated before baselines were recorded is not promoted
("no baseline scores recorded; re-run mvg evaluate"), nor one whose evaluation had failed test
cases (`eval.failed_cases` above 0: scores of part of the cases only).

The flow prints nothing of its verdict: it returns it, keeps it on the version (tags and card), and
the caller says it once (`mvg promote`, `mvg evaluate`, `mvg demo`). A print here would reach the
terminal as well, through Prefect's log of the flow's prints, and the command's line would repeat it.
"""

from __future__ import annotations

from prefect import flow

from mvg.cards import refresh_cards
from mvg.names import CANDIDATE, CHAMPION, alias_uri
from mvg.promotion import PromotionRule, decide, primary_scores
from mvg.tracking import EVAL_TAG, alias_version, baseline_metrics, client, evaluated_metrics, resolve_version, tracking_uri

# version tag: how many test cases the version's latest evaluation could not score (set by the
# evaluate flow on every evaluation, 0 included, so that a clean re-evaluation clears it)
FAILED_CASES_TAG = f"{EVAL_TAG}failed_cases"


@flow(name="promote", log_prints=True)
def promote_flow(model_uri: str = alias_uri(CANDIDATE), rule: str = "every", tolerance: float = 0.0) -> dict:
    rule_ = PromotionRule(rule, tolerance)
    uri = tracking_uri()
    version = resolve_version(uri, model_uri)
    if version is None:
        raise ValueError(f"{model_uri}: only a registry version (models:/NAME/VERSION or models:/NAME@ALIAS) can be promoted")
    name, number = version
    candidate = primary_scores(evaluated_metrics(uri, name, number))
    if not candidate:
        raise ValueError(f"{name} version {number} has no evaluation recorded: run `mvg evaluate --model {model_uri}` first")
    champion = alias_version(uri, name, CHAMPION)
    if champion == number:
        return {"version": number, "promoted": True, "reason": f"already the {CHAMPION}", "champion": number}
    champion_scores = None if champion is None else primary_scores(evaluated_metrics(uri, name, champion))
    baselines = primary_scores(baseline_metrics(uri, name, number))
    mlflow = client(uri)
    # absent on versions evaluated before failed cases were recorded: those evaluations stopped at a damaged case
    failed_cases = int(mlflow.get_model_version(name, number).tags.get(FAILED_CASES_TAG, "0"))
    decision = decide(candidate, baselines, champion_scores, rule_, failed_cases)
    mlflow.set_model_version_tag(name, number, "promotion", CHAMPION if decision.promote else "rejected")
    mlflow.set_model_version_tag(name, number, "promotion.reason", decision.reason)
    previous = champion
    if decision.promote:
        mlflow.set_registered_model_alias(name, CHAMPION, number)
        champion = number
    refresh_cards(uri, name, number, *([previous] if decision.promote and previous else []))
    return {"version": number, "promoted": decision.promote, "reason": decision.reason, "champion": champion}
