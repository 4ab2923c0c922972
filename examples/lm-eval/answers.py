"""Scoring of the short-answer tasks: an answer counts when it contains the expected word (case ignored)."""


def process_results(doc: dict, results: list[str]) -> dict[str, int]:
    """``{"contains": 1}`` when the generated answer holds the expected word."""
    return {"contains": int(doc["answer"].lower() in results[0].lower())}
