"""Scores for generated text: VADER sentiment of the response, and the normaliser PPO sees.

`VaderScorer` gives the VADER compound score in [-1, 1] (Hutto & Gilbert 2014; the
`vaderSentiment` package bundles its lexicon and works offline) of each response after
`drop_partial_word`: a response cut at a fixed length usually ends inside a word ("...my swe"),
and that fragment is dropped so that "swe" is not read as a word it was not going to be.

`ScoreNormalizer`:  s' = (s - bias) / gain  with bias and gain the mean and standard deviation of
scores of *reference* samples, measured once before PPO starts (Ziegler et al. 2019 normalise their
reward model the same way), so the reference policy sits at mean 0, std 1 and beta means the same
thing whatever the scorer's scale.

Follows: Ziegler et al. 2019 (reward normalisation), the vaderSentiment README.
Deliberately does not: look at the prompt (only the response is scored), or cache scores.
"""
import re
from dataclasses import dataclass

import numpy as np

_TRAILING_WORD = re.compile(r"[A-Za-z']+$")
POSITIVE_THRESHOLD = 0.05  # VADER's own line for a positive text (compound >= 0.05, its README)


def drop_partial_word(text):
    """The text without a trailing run of letters/apostrophes (a word the length limit may have cut).

    "I love thee swe" -> "I love thee ";  "I love thee!" -> unchanged;  "sweet" -> "".
    """
    return _TRAILING_WORD.sub("", text)


def _load_vader():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as exc:
        raise ImportError("the VADER scorer needs the vaderSentiment package, which is not installed: "
                          "pip install vaderSentiment  (or pip install -e .[rlhf])") from exc
    return SentimentIntensityAnalyzer()


class VaderScorer:
    """texts -> VADER compound scores (N,) float64, each of the text after drop_partial_word."""

    name = "vader"

    def __init__(self):
        self._analyzer = _load_vader()

    def __call__(self, texts):
        return np.array([self._analyzer.polarity_scores(drop_partial_word(t))["compound"] for t in texts],
                        dtype=np.float64)                                 # (N,)


def signed_power(scores, p):
    """sign(s) |s|^p elementwise (p = PPOConfig.score_power); p = 1 returns the scores unchanged.

    With p < 1 the map is concave above 0 and convex below: 0 -> 0.1 gains more than 0.5 -> 0.6
    (p = 0.5: 0.32 against 0.06), so PPO is paid most for making a neutral completion positive.
    """
    s = np.asarray(scores, dtype=np.float64)                              # (N,)
    return s if p == 1 else np.sign(s) * np.abs(s) ** p


def shaped_score(scores, power=1.0, bonus=0.0, threshold=POSITIVE_THRESHOLD):
    """What PPO optimises for a gold score s (before normalising): sign(s) |s|^power + bonus [s > threshold].

    power, bonus and threshold are PPOConfig.score_power / positive_bonus / positive_threshold; with the
    defaults (1, 0) this is s itself.
    """
    s = np.asarray(scores, dtype=np.float64)                              # (N,)
    shaped = signed_power(s, power)                                       # (N,)
    return shaped + bonus * (s > threshold) if bonus else shaped


@dataclass
class ScoreNormalizer:
    """s' = (s - bias) / gain; `fit` measures bias and gain on scores of reference samples."""
    bias: float = 0.0
    gain: float = 1.0

    def fit(self, reference_scores):
        s = np.asarray(reference_scores, dtype=np.float64)
        if s.size < 2:
            raise ValueError(f"ScoreNormalizer.fit: need >= 2 reference scores, got {s.size}")
        self.bias = float(s.mean())
        self.gain = float(max(s.std(), 1e-6))  # subtle: a constant scorer would divide by zero
        return self

    def __call__(self, scores):
        return (np.asarray(scores, dtype=np.float64) - self.bias) / self.gain
