"""The soft prompt Lethe exports is PEFT's prompt-tuning adapter: ``PeftModel.from_pretrained`` on the same base
model loads it and gives the logits Lethe gives a flagged prompt (issue 19).

The forget set is a soft prompt alone (method ``spul``), so the whole plan Lethe applies to a flagged prompt
is one that PEFT can express: the virtual tokens in front of the prompt's embeddings.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lethe.runtime.artifact import (
    SOFT_PROMPT_DIR,
    BaseModelInfo,
    ForgetSetArtifact,
    ForgetSetManifest,
    ForgetSetParameters,
    SpulParameters,
    utc_now,
)
from lethe.runtime.model import LanguageModel
from lethe.runtime.screening import ForgetSetScreen

peft = pytest.importorskip("peft", reason="PEFT is a test extra (pip install -e '.[test]')")


def test_peft_loads_the_exported_soft_prompt_and_gives_lethes_logits_for_a_flagged_prompt(
    tiny_full: LanguageModel, authors_paths: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from lethe.benchmarks.authors_world import WorldConfig, build_world
    from lethe.classifier import ClassifierConfig, train_scope_classifier

    world = build_world(WorldConfig.test())
    forget, retain = [r["prompt"] for r in world.rows("forget")], [r["prompt"] for r in world.rows("retain")]
    fast = ClassifierConfig(seed=0, variants_per_prompt=1, frames_per_entity=2, near_misses_per_prompt=1)
    classifier = train_scope_classifier(forget, retain, fast)
    generator = torch.Generator().manual_seed(7)
    soft_prompt = torch.randn(5, tiny_full.hidden_size, generator=generator) * float(
        tiny_full.embedder.embedding_weight.std()
    )
    manifest = ForgetSetManifest(
        id="fs-peftparity1",
        name="peft parity",
        created=utc_now(),
        base_model=BaseModelInfo(name="tiny-authors", fingerprint=tiny_full.fingerprint),
        method="spul",
        parameters=ForgetSetParameters(token_mode="salient", spul=SpulParameters(num_virtual_tokens=5)),
    )
    folder = ForgetSetArtifact(manifest, classifier, soft_prompt=soft_prompt).save(tmp_path / "fs-peftparity1")

    # Lethe: the artifact as the gateway loads it, the plan its screen decides for a flagged chat prompt.
    screen = ForgetSetScreen()
    screen.put(ForgetSetArtifact.load(folder, tiny_full.fingerprint, tiny_full.hidden_size))
    messages = [{"role": "user", "content": forget[0]}]
    prompt = tiny_full.chat_prompt(messages)
    flags = screen.classify(messages)
    assert flags, "the forget question must be flagged"
    plan = screen.decide(flags, prompt, 0, tiny_full.embedder).plan
    assert plan is not None and plan.prefix_length == 5 and not plan.corruptions and not plan.entities
    with torch.no_grad():
        lethe = tiny_full.model(inputs_embeds=tiny_full.prompt_embeddings(prompt, plan).unsqueeze(0)).logits[0]

    # PEFT: the exported adapter folder on a fresh copy of the same base model.
    base = AutoModelForCausalLM.from_pretrained(authors_paths["full"], torch_dtype=torch.float32).eval()
    model = peft.PeftModel.from_pretrained(base, folder / SOFT_PROMPT_DIR).eval()
    assert model.peft_config["default"].peft_type == peft.PeftType.PROMPT_TUNING
    with torch.no_grad():
        ids = torch.tensor([list(prompt.ids)])
        theirs = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
    assert theirs.shape == lethe.shape  # virtual tokens and prompt, in that order, both ways
    torch.testing.assert_close(theirs[5:], lethe[5:], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(
        theirs[5:], tiny_full.model(input_ids=ids).logits[0], atol=1e-2
    )  # the soft prompt does change them
