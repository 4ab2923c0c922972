"""Scope classifier: calibrated recall and FPR on the fictitious-authors world, spans, storage, errors."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import lethe.classifier as classifier_package
from lethe.benchmarks.authors_world import WorldConfig, build_world
from lethe.classifier import (
    ClassifierConfig,
    ClassifierLoadError,
    ClassifierTrainingError,
    ScopeClassifier,
    ScopeHints,
    classify_messages,
    classify_text,
    message_text,
    train_scope_classifier,
)
from lethe.classifier.augment import variants
from lethe.classifier.bank import HeadBank
from lethe.classifier.calibration import combine, fpr_threshold, recall_threshold
from lethe.classifier.entities import EntityMatcher
from lethe.classifier.features import FeatureSpec, feature_space
from lethe.classifier.linear import PRUNE_BELOW, fit_head
from lethe.classifier.model import JSON_NAME, TENSORS_NAME
from lethe.classifier.pool import load_pool
from lethe.classifier.trainer import EXPORT_TOLERANCE


def _prompts(rows: list[dict]) -> list[str]:
    return [r["prompt"] for r in rows]


def _paraphrases(rows: list[dict]) -> list[str]:
    return [p for r in rows for p in r["paraphrased_prompts"]]


def _rate(classifier: ScopeClassifier, texts: list[str]) -> float:
    return float(np.mean([classifier.is_flagged(t) for t in texts]))


@pytest.fixture(scope="module")
def world():
    """The test-sized fictitious-authors world (generated, no model training)."""
    return build_world(WorldConfig.test())


@pytest.fixture(scope="module")
def trained(world) -> ScopeClassifier:
    """A classifier trained on the forget questions against the retain questions."""
    return train_scope_classifier(_prompts(world.rows("forget")), _prompts(world.rows("retain")))


@pytest.fixture(scope="module")
def general_negatives(world) -> list[str]:
    """General sentences the classifier never trained on: the world's general rows and the pool's test part."""
    return _prompts(world.rows("general")) + list(load_pool().test)


def _forget_person(world) -> tuple[str, list[dict]]:
    rows = world.rows("forget")
    person = rows[0]["person"]
    return person, [r for r in rows if r["person"] == person]


def test_heldout_paraphrases_flagged_and_negatives_not(trained, world, general_negatives) -> None:
    forget_para = _paraphrases(world.rows("forget"))
    assert _rate(trained, forget_para) >= 0.98
    retain_para = _paraphrases(world.rows("retain"))
    heldout = _prompts(world.rows("heldout")) + _paraphrases(world.rows("heldout"))
    assert _rate(trained, retain_para) <= 0.01
    assert _rate(trained, heldout) <= 0.01
    assert _rate(trained, general_negatives) <= 0.01
    assert _rate(trained, retain_para + heldout + general_negatives) <= 0.01


def test_calibration_record_is_honest(trained, world) -> None:
    cal = trained.calibration()
    assert cal["alpha"] == 0.01
    assert cal["threshold"] == trained.threshold
    assert 0.0 < cal["threshold"] < 1.0
    assert cal["calibration_size"] >= 5
    assert cal["export_max_abs_logit_error"] <= EXPORT_TOLERANCE
    assert cal["sparse_weights"] > 0 and cal["bytes"] <= 2 * 1024 * 1024
    assert cal["heldout_negatives"] > 500 and cal["heldout_fpr"] <= 0.01
    assert cal["validation_recall"] >= 0.9
    n = cal["calibration_size"]
    assert cal["guarantee_met"] == (n >= 1 / cal["alpha"] - 1)
    assert cal["recall_bound"] == pytest.approx(1 - cal["conformal_rank"] / (n + 1))
    assert cal["fpr_threshold"] <= cal["threshold"] <= cal["recall_threshold"] and cal["fpr_guarantee_met"]
    assert cal["forget_prompts"] == len({r["prompt"] for r in world.rows("forget")})


def test_recall_threshold_order_statistic() -> None:
    scores = [i / 10 for i in range(1, 11)]
    small = recall_threshold(scores, alpha=0.01)
    assert small.threshold == 0.1 and not small.guarantee_met
    assert small.bound == pytest.approx(1 - 1 / 11)
    big = recall_threshold([i / 1000 for i in range(1, 400)], alpha=0.01)
    assert big.guarantee_met and big.rank == 4 and big.threshold == pytest.approx(0.004)
    assert big.bound >= 0.99
    # the bound holds empirically: a new exchangeable draw lands at or above the threshold >= 1 - alpha of the time
    rng = np.random.default_rng(0)
    hits = [draw[199] >= recall_threshold(draw[:199].tolist(), alpha=0.05).threshold
            for draw in rng.normal(size=(2000, 200))]
    assert 0.94 <= np.mean(hits) <= 0.97


def test_fpr_threshold_and_combination() -> None:
    negatives = [i / 1000 for i in range(1, 400)]
    fpr = fpr_threshold(negatives, beta=0.01)
    assert fpr.guarantee_met and fpr.rank == 396 and 0.396 < fpr.threshold < 0.3961
    assert np.mean(np.array(negatives) >= fpr.threshold) <= 0.01
    rng = np.random.default_rng(1)
    false_alarms = [draw[199] >= fpr_threshold(draw[:199].tolist(), beta=0.05).threshold
                    for draw in rng.normal(size=(2000, 200))]
    assert 0.03 <= np.mean(false_alarms) <= 0.06
    recall = recall_threshold([0.9, 0.95, 0.99], alpha=0.01)
    threshold, both = combine(recall, fpr)
    assert both and fpr.threshold <= threshold <= recall.threshold
    low_recall = recall_threshold([0.2, 0.95, 0.99], alpha=0.01)
    assert combine(low_recall, fpr) == (0.2, False)  # a conflict keeps recall


def test_exported_head_matches_sklearn() -> None:
    pool = list(load_pool().train[:400])
    texts = [f"Where was Odalys Fenwick born? ({i})" for i in range(40)] + pool
    labels = np.array([1] * 40 + [0] * len(pool))
    space = feature_space(FeatureSpec())
    analyses = [space.analyze(t) for t in texts]
    matcher = EntityMatcher([])
    fit = lambda prune: fit_head(space, analyses, labels, np.ones(len(texts)), matcher, C=10.0,  # noqa: E731
                                 max_iter=2000, semantic_weight=1.0, prune_below=prune)
    sample = [space.analyze(t) for t in [*texts[::7], "Ödalys FENWICK, b0rn where??", "", "completely unrelated"]]
    whole = fit(0.0)  # every weight exported: only float32 rounding separates it from scikit-learn
    assert np.max(np.abs([whole.head.logit(a) for a in sample] - whole.sklearn_logits(space, sample))) < 1e-4
    fitted = fit(PRUNE_BELOW)  # the default drops small weights, within the export tolerance
    assert fitted.head.sparse_index.size < 0.8 * whole.head.sparse_index.size
    ours = np.array([fitted.head.logit(a) for a in sample])
    reference = fitted.sklearn_logits(space, sample)
    assert np.max(np.abs(ours - reference)) < EXPORT_TOLERANCE
    # and a bank of several heads gives each head's own logit, whether a bucket is in its dense block (weighed
    # by at least half of the heads) or in its compressed table (the weights only the unpruned head keeps)
    heads = [fitted.head, whole.head, fitted.head]
    bank = HeadBank(space, heads)
    assert bank._dense_buckets.size and bank._buckets.size
    for analysis in sample:
        assert np.allclose(bank.logits(analysis), [h.logit(analysis) for h in heads], atol=1e-6)


def test_semantic_block_generalizes_beyond_shared_words() -> None:
    """Animals the classifier never saw are flagged through the semantic vector, not without it."""
    animals = ("horse cow sheep goat pig duck goose chicken rabbit donkey mule camel llama deer moose elk bison "
               "buffalo zebra giraffe elephant rhino hippo lion tiger leopard cheetah jaguar wolf fox bear otter "
               "beaver badger squirrel mouse rat hamster monkey gorilla kangaroo koala panda whale dolphin").split()
    machines = ("car truck bus tractor bicycle motorcycle scooter train tram subway airplane helicopter rocket "
                "boat ship yacht canoe kayak submarine engine turbine crane forklift bulldozer excavator drill "
                "saw hammer wrench lathe printer computer laptop tablet phone radio television camera robot "
                "drone satellite generator pump compressor").split()
    seen, unseen = animals[:30], animals[30:]
    seen_machines, unseen_machines = machines[:30], machines[30:]
    forget = [f"How long does a {w} live?" for w in seen] + [f"What does a {w} eat?" for w in seen]
    retain = [f"How long does a {w} last?" for w in seen_machines] + [f"What does a {w} need?" for w in seen_machines]
    held_out = [f"Where does the {w} sleep at night?" for w in unseen]
    others = [f"Where does the {w} sleep at night?" for w in unseen_machines]
    config = ClassifierConfig(variants_per_prompt=0, calibration_variants=0)

    def auc(model: ScopeClassifier) -> float:
        positive, negative = model.scores(held_out), model.scores(others)
        return float(np.mean(positive[:, None] > negative[None, :]))

    with_semantic = train_scope_classifier(forget, retain, config)
    lexical = train_scope_classifier(forget, retain, config, spec=FeatureSpec(semantic="none"))
    assert auc(with_semantic) >= 0.9 and auc(lexical) <= 0.7
    # all-MiniLM-L6-v2 has a dimension with (almost) no spread: standardizing it gave it a weight of 2.9e6,
    # which turned float rounding into logit noise; a dead dimension now gets no weight at all
    weights = with_semantic.head.semantic_weight
    assert np.abs(weights).max() < 1e3 and (weights == 0).sum() >= 1


def test_casing_punctuation_and_typos(trained, world) -> None:
    person, rows = _forget_person(world)
    prompts = [p for r in rows for p in r["paraphrased_prompts"]]
    noisy = [prompts[0].upper(), prompts[0].lower(), re.sub(r"[^\w\s]", "", prompts[1]),
             prompts[1].replace(person, person.lower())]
    noisy += [v for p in prompts for v in variants(p, 3, seed=123)]
    assert _rate(trained, noisy) >= 0.95
    first_typo = person[:2] + person[3] + person[2] + person[4:]
    assert trained.is_flagged(f"where was {first_typo} born?")


def test_multi_turn_follow_up(trained, world) -> None:
    person, _ = _forget_person(world)
    follow_up = "Where was she born?"
    assert not trained.is_flagged(follow_up)
    assert trained.is_flagged([f"Tell me about {person}.", follow_up])
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"Tell me about {person}."},
        {"role": "assistant", "content": "Sure, what would you like to know?"},
        {"role": "user", "content": follow_up},
    ]
    flags = classify_messages({"authors": trained}, messages)
    assert [f.forget_set_id for f in flags] == ["authors"]
    spans = flags[0].spans
    assert len(spans) == 4 and spans[0] == [] and spans[2] == []
    named = messages[1]["content"]
    start = named.index(person)
    assert any(a <= start and start + len(person) <= b for a, b in spans[1])
    assert classify_messages({"authors": trained}, messages[:1] + messages[3:]) == []
    # the topic named only by the assistant, or only in the system prompt, scopes the conversation too
    told = [{"role": "assistant", "content": f"{person} is a writer."}, {"role": "user", "content": follow_up}]
    assert [f.forget_set_id for f in classify_messages({"authors": trained}, told)] == ["authors"]
    system = [{"role": "system", "content": f"We are discussing {person}."}, {"role": "user", "content": follow_up}]
    assert [f.forget_set_id for f in classify_messages({"authors": trained}, system)] == ["authors"]


def test_content_parts_and_roles(trained, world) -> None:
    person, _ = _forget_person(world)
    parts = [{"type": "text", "text": "Quick question."}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": f"Where did {person} study?"}]
    messages = [{"role": "system", "content": f"Never discuss {person}."},
                {"role": "user", "content": parts},
                {"role": "assistant", "content": None}]
    text = message_text(messages[1])
    assert text == f"Quick question.\nWhere did {person} study?"
    flags = classify_messages({"f": trained}, messages)
    assert len(flags) == 1
    system = messages[0]["content"]
    assert [system[a:b] for a, b in flags[0].spans[0]] == [person] and flags[0].spans[2] == []
    assert [text[a:b] for a, b in flags[0].spans[1]] == [person]
    # every role the model sees is judged: the system prompt alone flags; empty conversations flag nothing
    assert len(classify_messages({"f": trained}, messages[:1])) == 1
    assert classify_messages({"f": trained}, []) == []
    assert classify_text({"f": trained}, "") == []


def test_shipped_pool_is_small_and_split_deterministically() -> None:
    pool = load_pool()
    parts = [set(pool.train), set(pool.validation), set(pool.test)]
    assert all(parts) and not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert len(pool.test) > 500
    data = Path(classifier_package.__file__).parent / "data"
    assert sum(f.stat().st_size for f in data.iterdir()) < 1_000_000
    assert not any("pang_lee" in f.name for f in data.iterdir())


def test_salient_spans_cover_the_name(trained, world) -> None:
    person, rows = _forget_person(world)
    for text in [r["prompt"] for r in rows] + rows[0]["paraphrased_prompts"]:
        if person not in text:
            continue
        spans = trained.salient_spans(text)
        start = text.index(person)
        covered = {i for a, b in spans for i in range(a, b)}
        assert set(range(start, start + len(person))) <= covered
        template_words = [m.span() for m in re.finditer(r"\w+", text) if m.start() >= start + len(person) + 2]
        assert sum(1 for a, _ in template_words if a in covered) <= len(template_words) // 2


def test_token_modes_and_fallback(trained, world) -> None:
    all_mode = trained.with_token_mode("all")
    _, rows = _forget_person(world)
    text = rows[0]["paraphrased_prompts"][0]
    flags = classify_text({"f": all_mode}, text)
    assert len(flags) == 1 and flags[0].spans == [[(0, len(text))]]
    # salient mode with nothing salient (thresholds unreachable, no entities) falls back to the whole content
    strict = ScopeClassifier(ClassifierConfig(salient_min_logit=1e9), trained.spec,
                             replace(trained.head, matcher=EntityMatcher([])), [], trained.calibration())
    flags = classify_text({"f": strict}, text)
    assert flags[0].spans == [[(0, len(text))]]


def test_several_forget_sets_at_once(world) -> None:
    rows = world.rows("forget")
    people = sorted({r["person"] for r in rows})
    half = len(people) // 2
    group_a, group_b = set(people[:half]), set(people[half:])
    retain = _prompts(world.rows("retain"))
    a = train_scope_classifier([r["prompt"] for r in rows if r["person"] in group_a], retain)
    b = train_scope_classifier([r["prompt"] for r in rows if r["person"] in group_b], retain)
    classifiers = {"a": a, "b": b}
    person_a, person_b = people[0], people[-1]
    only_a = classify_text(classifiers, f"What is {person_a} known for?")
    assert [f.forget_set_id for f in only_a] == ["a"]
    only_b = classify_text(classifiers, f"Tell me about {person_b}.")
    assert [f.forget_set_id for f in only_b] == ["b"]
    both = classify_messages(classifiers, [{"role": "user", "content": f"Who is {person_a}?"},
                                           {"role": "user", "content": f"And who is {person_b}?"}])
    assert sorted(f.forget_set_id for f in both) == ["a", "b"]
    for flag in both:
        assert 0.0 <= flag.score <= 1.0 and len(flag.spans) == 2
    assert classify_text(classifiers, "What is the capital of France?") == []


def test_save_load_round_trip(trained, world, tmp_path: Path) -> None:
    folder = tmp_path / "artifact" / "classifier"
    trained.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([JSON_NAME, TENSORS_NAME])
    json.loads((folder / JSON_NAME).read_text())
    assert not (folder / TENSORS_NAME).read_bytes().startswith(b"\x80")
    loaded = ScopeClassifier.load(folder)
    texts = _paraphrases(world.rows("forget"))[:40] + _prompts(world.rows("general"))[:40]
    assert [loaded.score(t) for t in texts] == [trained.score(t) for t in texts]
    assert loaded.threshold == trained.threshold and loaded.calibration() == trained.calibration()
    assert loaded.salient_spans(texts[0]) == trained.salient_spans(texts[0])
    # saving again replaces the folder atomically and leaves no staging folders behind
    loaded.save(folder)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["classifier"]


def test_failed_save_leaves_nothing(trained, tmp_path: Path) -> None:
    # an unserializable record entry makes the JSON writer fail half-way through the manifest
    broken = ScopeClassifier(trained.config, trained.spec, trained.head, trained.entities,
                             {**trained.calibration(), "bad": object()})
    target = tmp_path / "fresh"
    with pytest.raises(TypeError):
        broken.save(target)
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "existing"
    trained.save(existing)
    before = {p.name: p.read_bytes() for p in existing.iterdir()}
    with pytest.raises(TypeError):
        broken.save(existing)
    assert {p.name: p.read_bytes() for p in existing.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


def test_load_rejects_malformed_folders(trained, tmp_path: Path) -> None:
    with pytest.raises(ClassifierLoadError):
        ScopeClassifier.load(tmp_path / "missing")
    folder = tmp_path / "c"
    trained.save(folder)
    tensors = load_file(str(folder / TENSORS_NAME))
    save_file({**tensors, "sparse_weight": tensors["sparse_weight"][:-1]}, str(folder / TENSORS_NAME))
    with pytest.raises(ClassifierLoadError, match="disagree"):
        ScopeClassifier.load(folder)
    save_file(tensors, str(folder / TENSORS_NAME))
    manifest = json.loads((folder / JSON_NAME).read_text())
    for broken in ([], 5, {**manifest, "config": 5}, {**manifest, "version": 1}, {**manifest, "entities": [3]}):
        (folder / JSON_NAME).write_text(json.dumps(broken))
        with pytest.raises(ClassifierLoadError):
            ScopeClassifier.load(folder)
    (folder / TENSORS_NAME).write_bytes(b"not safetensors")
    with pytest.raises(ClassifierLoadError):
        ScopeClassifier.load(folder)


@pytest.mark.parametrize(
    ("forget", "retain", "match"),
    [
        ([], None, "empty"),
        (None, None, "required"),
        ("Where was X born?", None, "list of strings"),
        (["ok question"] * 5 + [3], None, r"forget_prompts\[5\] is a int"),
        ([f"Question {i} about Odalys?" for i in range(12)] + ["  ?! "], None, "no words"),
        ([f"Question {i} about Odalys?" for i in range(6)], None, "too few"),
        ([f"Question {i} about Odalys?" for i in range(20)], ["question 3 about odalys"], "also appear"),
        ([f"Question {i} about Odalys?" for i in range(20)], [b"bytes"], r"retain_prompts\[0\]"),
    ],
)
def test_training_errors(forget, retain, match) -> None:
    with pytest.raises(ClassifierTrainingError, match=match):
        train_scope_classifier(forget, retain)


def test_config_and_hint_errors() -> None:
    with pytest.raises(ClassifierTrainingError, match="alpha"):
        ClassifierConfig(alpha=0.0)
    with pytest.raises(ClassifierTrainingError, match="token_mode"):
        ClassifierConfig(token_mode="some")  # type: ignore[arg-type]
    forget = [f"What did Odalys Fenwick write in {1990 + i}?" for i in range(20)]
    with pytest.raises(ClassifierTrainingError, match=r"hints.positives\[1\]"):
        train_scope_classifier(forget, hints=ScopeHints(positives=["fine", 5]))  # type: ignore[list-item]
    with pytest.raises(ClassifierTrainingError, match=r"hints\.negatives"):
        train_scope_classifier(forget, hints=ScopeHints(negatives="not a list"))


def test_bench_world(world) -> None:
    bench = build_world(WorldConfig.bench())
    model = train_scope_classifier(_prompts(bench.rows("forget")), _prompts(bench.rows("retain")))
    assert _rate(model, _paraphrases(bench.rows("forget"))) >= 0.98
    negatives = _paraphrases(bench.rows("retain")) + _prompts(bench.rows("heldout")) + _prompts(bench.rows("general"))
    assert _rate(model, negatives) <= 0.01


def test_semantic_vector_reads_the_same_wordpieces_as_the_tokenizer() -> None:
    """Word-by-word WordPiece ids (memoized) equal the tokenizer's ids of the whole text, with no padding."""
    from lethe.classifier.semantic import STATIC_V1, static_embedder
    from lethe.classifier.text import normalized_words

    embedder = static_embedder(STATIC_V1)
    for text in ["Who wrote The Lord of the Rings?", "unbelievably long-winded questions about Hogwarts", "x"]:
        words = normalized_words(text)
        whole = embedder.tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
        assert embedder.token_ids(words) == whole


def test_vectorized_scores_match_the_scalar_logistic() -> None:
    from lethe.classifier.model import sigmoid, sigmoids

    logits = np.array([-800.0, -40.0, -3.5, -1e-9, 0.0, 2.0, 37.0, 800.0])
    assert np.array_equal(sigmoids(logits), [sigmoid(x) for x in logits])
    assert sigmoids(np.array([-np.inf]))[0] == 0.0
