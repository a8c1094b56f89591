"""The generate_summary reference executable: sentence splitting, scoring, selection, contract."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from executors.scene import GenerateScene
from executors.summary import GenerateSummary, score_sentences, select_sentences, summarize
from executors.text import content_words, split_sentences
from taskplatform.tasks.executable import Progress
from taskplatform.tasks.registry import ExecutableRegistry
from taskplatform.testing import FakeTaskContext

SOLAR_TEXT = (
    "The weather was pleasant on Tuesday. "
    "Solar panels convert sunlight into electricity. "
    "My cousin enjoys baking bread on weekends. "
    "Modern solar panels convert more sunlight into electricity than older solar panels. "
    "The cat slept on the sofa. "
    "Cheap solar electricity helps homes cut energy bills."
)


def summary_context(params: Any, *, cancelled: bool = False) -> FakeTaskContext[Any]:
    return FakeTaskContext(
        params, task_type="generate_summary", attempt=1, user_id="user-1", cancelled=cancelled
    )


# ------------------------------------------------------------ sentence splitting
# "|" marks where the splitter must cut; the input is the same text with each "|" as a space.
@pytest.mark.parametrize(
    "marked",
    [
        "Mr. Smith met Dr. Watson on Friday.|They discussed pay, e.g. salaries, i.e. money, etc. and left.",
        "Pi is about 3.14 and e is 2.718.|Both are irrational.",
        "She moved to the U.S. in 2010.|The U.S. Army hired her.",
        "He lives in the U.S.|The weather is mild.",
        "We sold apples, pears, etc.|Then we closed.",
        "J. R. R. Tolkien wrote it.|It sold well.",
        "See No. 5 for details.|I said no.|Then I left.",
        '"Are you coming?" she asked.|"No!"|He left...|Then silence.|Wait... what?',
        "He said it (quietly.)|After that, nothing!",
        "Read a classic, e.g. The Hobbit.|It helps, cf. Chapter 2.",
        "Prof. Ruiz measured 0.5 ml at 10 a.m. on Monday.|Results followed?!|Yes.",
        "No final punctuation here",
    ],
)
def test_split_sentences_handles_abbreviations_decimals_and_quotes(marked: str) -> None:
    assert split_sentences(marked.replace("|", " ")) == marked.split("|")


def test_split_sentences_breaks_on_blank_lines_and_bullets_but_not_wrapped_lines() -> None:
    text = "Overview\n\nFirst sentence here. Second one\ncontinues here.\n- item one\n- item two"
    assert split_sentences(text) == [
        "Overview",
        "First sentence here.",
        "Second one continues here.",
        "- item one",
        "- item two",
    ]


def test_split_sentences_drops_fragments_without_words() -> None:
    assert split_sentences("Hello world.  ...  !!! ") == ["Hello world."]


def test_content_words_drop_stop_words_digits_and_possessives() -> None:
    assert content_words("The company's CEO didn't say 42 words about Zürich, naïvely.") == [
        "company",
        "ceo",
        "words",
        "zürich",
        "naïvely",
    ]


# ------------------------------------------------------------ scoring and selection
def test_summary_picks_the_central_sentences_in_original_order() -> None:
    result = summarize(SOLAR_TEXT, max_sentences=2)

    assert result.sentence_indices == [1, 3]
    assert result.sentences == [
        "Solar panels convert sunlight into electricity.",
        "Modern solar panels convert more sunlight into electricity than older solar panels.",
    ]
    assert result.summary == " ".join(result.sentences)
    assert result.original_sentence_count == 6
    assert result.compression_ratio == round(len(result.summary) / len(SOLAR_TEXT), 4)
    assert 0 < result.compression_ratio < 1


def test_summary_keeps_original_order_even_when_a_later_sentence_scores_higher() -> None:
    sentences = split_sentences(SOLAR_TEXT)
    scores = score_sentences([content_words(s) for s in sentences])
    assert scores[3] > scores[1]  # the later sentence is the best one...

    result = summarize(SOLAR_TEXT, max_sentences=2)
    assert result.sentences[0] == sentences[1]  # ...yet the summary still reads in text order


def test_keywords_are_most_frequent_content_words_with_alphabetical_ties() -> None:
    # solar 4; electricity 3 and panels 3 tie; convert 2 and sunlight 2 tie.
    assert summarize(SOLAR_TEXT).keywords == ["solar", "electricity", "panels", "convert", "sunlight"]


def test_text_with_no_more_sentences_than_asked_is_returned_whole() -> None:
    text = "Cats sleep a lot.\nDogs bark at night!   Birds sing at dawn?"
    result = summarize(text, max_sentences=5)

    assert result.sentence_indices == [0, 1, 2]
    assert result.summary == "Cats sleep a lot. Dogs bark at night! Birds sing at dawn?"
    assert result.original_sentence_count == 3


def test_score_is_normalised_frequency_over_sqrt_length_plus_first_sentence_bonus() -> None:
    # solar 3, panels 2 (top 3): [3/3] / sqrt(1) = 1.0 and [(3+2+2+3)/3] / sqrt(4) = 5/3;
    # the first sentence then gains 10 % of the best score.
    scores = score_sentences([["solar"], ["solar", "panels", "panels", "solar"]])
    assert scores == pytest.approx([1.0 + 0.1 * 5 / 3, 5 / 3])


def test_first_sentence_gets_a_small_position_bonus() -> None:
    scores = score_sentences([["river", "boat"], ["river", "boat"]])
    assert scores[0] > scores[1]
    assert scores[0] < scores[1] * 1.2


def test_ties_go_to_the_earlier_sentence() -> None:
    assert select_sentences([1.0, 2.0, 2.0, 2.0], 2) == [1, 2]
    assert select_sentences([0.0, 0.0, 0.0], 2) == [0, 1]


def test_text_of_only_stop_words_still_summarizes_from_the_start() -> None:
    result = summarize("It is what it is. So be it. And then there were none.", max_sentences=1)
    assert result.sentence_indices == [0]
    assert result.keywords == []


def test_summarize_is_deterministic() -> None:
    first = summarize(SOLAR_TEXT * 3, max_sentences=4)
    second = summarize(SOLAR_TEXT * 3, max_sentences=4)
    assert first == second
    assert first.model_dump_json() == second.model_dump_json()


# ------------------------------------------------------------ parameters
@pytest.mark.parametrize(
    ("fields", "error_fragment"),
    [
        ({"text": ""}, "at least 1 character"),
        ({"text": "  ...  !!! ?"}, "at least one word"),
        ({"text": "Fine text.", "max_sentences": 0}, "greater than or equal to 1"),
        ({"text": "Fine text.", "max_sentences": 51}, "less than or equal to 50"),
        ({"text": "Fine text.", "ratio": 0.5}, "Extra inputs are not permitted"),
        ({"text": "x" * 200_001}, "at most 200000 characters"),
    ],
)
def test_invalid_params_are_rejected(fields: dict[str, Any], error_fragment: str) -> None:
    with pytest.raises(ValidationError, match=error_fragment):
        GenerateSummary.Params(**fields)


def test_params_defaults() -> None:
    params = GenerateSummary.Params(text="One. Two.")
    assert params.max_sentences == 3


# ------------------------------------------------------------ the executable contract
async def test_execute_reports_progress_and_returns_the_same_result_as_summarize() -> None:
    params = GenerateSummary.Params(text=SOLAR_TEXT, max_sentences=2)
    ctx = summary_context(params)

    result = await GenerateSummary().execute(ctx)

    assert result == summarize(SOLAR_TEXT, max_sentences=2)
    assert len(ctx.progress) == 1
    progress = ctx.progress[0]
    assert isinstance(progress, Progress)
    assert progress.percent is not None and 0 < progress.percent < 100
    assert progress.message == "scored 6 sentences"
    assert ctx.messages == ["summary generated"]


def test_registry_accepts_both_reference_executables() -> None:
    registry = ExecutableRegistry([GenerateSummary, GenerateScene])

    assert registry.task_types() == ["generate_scene", "generate_summary"]
    assert registry.get("generate_summary") is GenerateSummary
    assert GenerateSummary.description and GenerateScene.description


def test_modules_load_as_executor_modules() -> None:
    registry = ExecutableRegistry.discover(["executors.summary", "executors.scene"], entry_point_group=None)
    assert list(registry) == [GenerateSummary, GenerateScene]
