"""``generate_summary``: a deterministic extractive summarizer (word frequencies, no model)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from executors.text import content_words, split_sentences
from taskplatform.tasks.executable import BackgroundTaskExecutable, Progress, TaskContext

#: Share of the best score added to the first sentence: openings tend to state the topic.
FIRST_SENTENCE_BONUS = 0.1
KEYWORD_COUNT = 5

_WORD_CHAR = re.compile(r"\w")


class GenerateSummary(BackgroundTaskExecutable["GenerateSummary.Params", "GenerateSummary.Result"]):
    """Pick the most representative sentences of an English text, in their original order."""

    task_type = "generate_summary"
    description = "Extractive summary of an English text: its most central sentences and top keywords."

    class Params(BaseModel):
        """What to summarize and how short."""

        model_config = ConfigDict(extra="forbid")

        text: str = Field(min_length=1, max_length=200_000)
        max_sentences: int = Field(default=3, ge=1, le=50)

        @field_validator("text")
        @classmethod
        def _has_words(cls, value: str) -> str:
            if not _WORD_CHAR.search(value):
                raise ValueError("text must contain at least one word (a letter or a digit)")
            return value

    class Result(BaseModel):
        """The chosen sentences and some numbers about them."""

        summary: str
        sentences: list[str]
        sentence_indices: list[int]
        original_sentence_count: int
        compression_ratio: float
        keywords: list[str]

    async def execute(self, ctx: TaskContext[GenerateSummary.Params]) -> GenerateSummary.Result:
        """Split, score, report progress, select."""
        params = ctx.parameters
        sentences = split_sentences(params.text)
        tokens = [content_words(s) for s in sentences]
        scores = score_sentences(tokens)
        await ctx.update_progress(Progress(percent=60, message=f"scored {len(sentences)} sentences"))
        result = _build_result(params.text, sentences, tokens, scores, params.max_sentences)
        ctx.log_info(
            "summary generated",
            chosen=len(result.sentence_indices),
            of=result.original_sentence_count,
        )
        return result


def summarize(text: str, max_sentences: int = 3) -> GenerateSummary.Result:
    """The whole algorithm without a task context; ``execute`` does the same in steps."""
    sentences = split_sentences(text)
    tokens = [content_words(s) for s in sentences]
    return _build_result(text, sentences, tokens, score_sentences(tokens), max_sentences)


def score_sentences(sentence_tokens: Sequence[Sequence[str]]) -> list[float]:
    """Score each sentence by how frequent its content words are in the whole text.

    Frequencies are normalised by the top frequency; a sentence's sum is divided by the
    square root of its length so long sentences do not win just by being long.
    """
    frequency = Counter(word for tokens in sentence_tokens for word in tokens)
    if not frequency:
        return [0.0] * len(sentence_tokens)
    top = max(frequency.values())
    scores = [
        sum(frequency[word] for word in tokens) / top / math.sqrt(len(tokens)) if tokens else 0.0
        for tokens in sentence_tokens
    ]
    if scores:
        scores[0] += FIRST_SENTENCE_BONUS * max(scores)
    return scores


def select_sentences(scores: Sequence[float], count: int) -> list[int]:
    """Indices of the ``count`` best scores, earlier sentences winning ties, in original order."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(ranked[:count])


def top_keywords(sentence_tokens: Sequence[Sequence[str]], count: int = KEYWORD_COUNT) -> list[str]:
    """The ``count`` most frequent content words; ties in alphabetical order."""
    frequency = Counter(word for tokens in sentence_tokens for word in tokens)
    ranked = sorted(frequency.items(), key=lambda item: (-item[1], item[0]))
    return [word for word, _ in ranked[:count]]


def _build_result(
    text: str,
    sentences: list[str],
    tokens: list[list[str]],
    scores: list[float],
    max_sentences: int,
) -> GenerateSummary.Result:
    indices = select_sentences(scores, max_sentences)
    chosen = [sentences[i] for i in indices]
    summary = " ".join(chosen)
    return GenerateSummary.Result(
        summary=summary,
        sentences=chosen,
        sentence_indices=indices,
        original_sentence_count=len(sentences),
        compression_ratio=round(len(summary) / len(text), 4) if text else 0.0,
        keywords=top_keywords(tokens),
    )
