"""Scope classifier: decides per request whether a prompt touches a live forget set.

Training (``train_scope_classifier``): forget prompts (and, for a topic, its coverage prompts) are
positives; retain prompts, look-alike names, adjacent-topic prompts (hard negatives) and a shipped
general pool (news and Wikipedia sentences from gensim, generic questions) are negatives. Positives
are split into train / validation / calibration parts. The model is a logistic regression over one
shared feature space (``classifier.features``): hashed word and character n-grams, a semantic vector
from static MiniLM token embeddings, and two fuzzy entity-mention features. Training texts are
augmented with casing, punctuation, typo and filler variants, surname-only forms and entity frames.

Threshold: split-conformal on held-out positives (recall >= 1 - alpha when there are enough of them)
and on held-out negatives (FPR <= fpr_target); when the two are ordered the threshold sits between
them, otherwise recall wins. ``calibration()`` records what was actually reached.

Serving: every live forget set's classifier reads the same analysis of a request, and a ``ScopeBank``
scores all of them with one sparse product; artifacts are JSON + safetensors, written atomically.
"""

from lethe.classifier.config import ClassifierConfig, ClassifierLoadError, ClassifierTrainingError, ScopeHints
from lethe.classifier.messages import ScopeBank, ScopeFlag, classify_messages, classify_text, message_text
from lethe.classifier.model import ScopeClassifier
from lethe.classifier.trainer import train_scope_classifier

__all__ = [
    "ClassifierConfig",
    "ClassifierLoadError",
    "ClassifierTrainingError",
    "ScopeBank",
    "ScopeClassifier",
    "ScopeFlag",
    "ScopeHints",
    "classify_messages",
    "classify_text",
    "message_text",
    "train_scope_classifier",
]
