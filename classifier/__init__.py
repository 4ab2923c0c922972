"""Scope classifier: decides per request whether a prompt touches an active forget set.

Training (``train_scope_classifier``): forget prompts are positives; retain prompts, look-alike
names and a shipped general pool (news and Wikipedia sentences from gensim, templated generic
questions) are negatives.  Forget prompts are split into train / validation / calibration parts.
The model is a logistic regression over word and character n-gram TF-IDF plus two fuzzy
entity-mention features (entities mined from the forget prompts), optionally with an external
featurizer block that is kept only if it wins on validation.  Training texts are augmented with
casing, punctuation, typo and filler variants, surname-only forms and entity frames.

Threshold: split-conformal on held-out forget prompts (recall >= 1 - alpha when there are enough
of them) and on held-out negatives (FPR <= fpr_target); when the two are ordered the threshold
sits between them, otherwise recall wins.  ``calibration()`` records what was actually reached.

Serving uses exported numpy weights and a small pure-Python scorer (no scikit-learn import);
artifacts are JSON + safetensors, written atomically.
"""

from lethe.classifier.config import ClassifierConfig, ClassifierLoadError, ClassifierTrainingError
from lethe.classifier.messages import ScopeFlag, classify_messages, classify_text, message_text
from lethe.classifier.model import ScopeClassifier
from lethe.classifier.trainer import train_scope_classifier

__all__ = [
    "ClassifierConfig",
    "ClassifierLoadError",
    "ClassifierTrainingError",
    "ScopeClassifier",
    "ScopeFlag",
    "classify_messages",
    "classify_text",
    "message_text",
    "train_scope_classifier",
]
