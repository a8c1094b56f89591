"""``generate_scene``: deterministic scene text for fiction writers, built from phrase banks.

The same parameters always give the same scene: every choice comes from a ``random.Random``
seeded with the caller's seed or a SHA-256 hash of the canonical parameters.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass
from itertools import permutations
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from executors.scene_phrases import (
    GENERIC_DETAILS,
    MOOD_ACTIONS,
    MOOD_LINES,
    MOOD_VERBS,
    OPENERS,
    REACTIONS,
    TIME_DETAILS,
    TIME_OPENINGS,
    TONE_ATMOSPHERE,
    TONE_CLOSINGS,
    TONE_DETAILS,
    TONE_TITLES,
    TRAIT_LINES,
    WEATHER_DETAILS,
    WEATHER_LINES,
)
from executors.text import as_sentence, capitalise, count_words, join_names, title_case, with_article
from taskplatform.errors import Cancelled
from taskplatform.tasks.executable import BackgroundTaskExecutable, Progress, TaskContext

TimeOfDay = Literal["dawn", "morning", "noon", "afternoon", "dusk", "evening", "night", "midnight"]
Weather = Literal["clear", "rain", "storm", "fog", "snow", "wind"]
Mood = Literal["calm", "anxious", "angry", "joyful", "sad", "curious", "determined", "fearful"]
Tone = Literal["hopeful", "tense", "melancholy", "whimsical", "ominous"]
Beat = Annotated[str, Field(min_length=1, max_length=500)]

# Padding and trimming aim inside [target, target * 1.15]; trimming starts above 1.1.
_PAD_CEILING = 1.15
_TRIM_ABOVE = 1.1


class Setting(BaseModel):
    """Where and when the scene happens."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    location: str = Field(min_length=1, max_length=200, description="e.g. 'the old lighthouse'")
    time_of_day: TimeOfDay = "evening"
    weather: Weather | None = None


class Character(BaseModel):
    """Someone in the scene."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=80)
    role: str | None = Field(default=None, max_length=80, description="e.g. 'ferryman' or 'a retired spy'")
    mood: Mood = "calm"
    trait: str | None = Field(default=None, max_length=80, description="a short adjective, e.g. 'stubborn'")


class GenerateScene(BackgroundTaskExecutable["GenerateScene.Params", "GenerateScene.Result"]):
    """Write a short scene from a setting, characters and plot beats; same input, same text."""

    task_type = "generate_scene"
    description = "Deterministic fiction scene from a setting, characters, tone and plot beats."

    class Params(BaseModel):
        """The scene's ingredients."""

        model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

        setting: Setting
        characters: list[Character] = Field(min_length=1, max_length=12)
        tone: Tone = "tense"
        beats: list[Beat] = Field(min_length=1, max_length=20, description="plot beats, in order")
        pov: Literal["first", "third"] = "third"
        target_words: int = Field(default=300, ge=50, le=3000)
        seed: int | None = None

        @field_validator("characters")
        @classmethod
        def _unique_names(cls, value: list[Character]) -> list[Character]:
            counts = Counter(c.name.casefold() for c in value)
            repeated = sorted({c.name for c in value if counts[c.name.casefold()] > 1})
            if repeated:
                raise ValueError(f"character names must be unique; repeated: {', '.join(repeated)}")
            return value

    class Result(BaseModel):
        """The written scene."""

        title: str
        text: str
        paragraphs: list[str]
        word_count: int
        characters_present: list[str]
        seed: int

    async def execute(self, ctx: TaskContext[GenerateScene.Params]) -> GenerateScene.Result:
        """Write the scene beat by beat, reporting progress and honouring cancellation."""
        params = ctx.parameters
        writer = SceneWriter(params)
        total = len(params.beats)
        for index in range(total):
            if ctx.cancelled:
                raise Cancelled(f"scene cancelled after {index} of {total} beats")
            writer.add_beat(index)
            percent = round(90 * (index + 1) / total, 1)
            await ctx.update_progress(Progress(percent=percent, message=f"beat {index + 1}/{total} written"))
        result = writer.finish()
        ctx.log_info("scene generated", words=result.word_count, seed=result.seed)
        return result


def write_scene(params: GenerateScene.Params) -> GenerateScene.Result:
    """The whole scene without a task context; ``execute`` does the same beat by beat."""
    writer = SceneWriter(params)
    for index in range(len(params.beats)):
        writer.add_beat(index)
    return writer.finish()


def scene_seed(params: GenerateScene.Params) -> int:
    """The caller's seed, else the first 8 bytes of a SHA-256 of the canonical parameters."""
    if params.seed is not None:
        return params.seed
    fields = params.model_dump(mode="json", exclude={"seed"})
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "big")


@dataclass
class _Sentence:
    text: str
    optional: bool  # trimming may drop it; the opening, the beats and the closing line stay


class SceneWriter:
    """Builds one scene: opening on construction, ``add_beat`` per beat, then ``finish``.

    Keep the call order fixed: the random stream is shared, so the same calls in the same
    order are what makes the text reproducible.
    """

    def __init__(self, params: GenerateScene.Params) -> None:
        self.params = params
        self.seed = scene_seed(params)
        # Not for security: a seeded PRNG is exactly what makes the text reproducible.
        self._rng = random.Random(self.seed)  # noqa: S311
        self._loc = params.setting.location
        narrator = 0 if params.pov == "first" else None
        # Subject and object forms per character: the first-person narrator is "I"/"me".
        self._subj = ["I" if i == narrator else c.name for i, c in enumerate(params.characters)]
        self._obj = ["me" if i == narrator else c.name for i, c in enumerate(params.characters)]
        self._paragraphs: list[list[_Sentence]] = []
        self._actors: list[int | None] = []  # character index acting in each paragraph
        self._used: set[str] = set()
        self.title = f"{self._rng.choice(TONE_TITLES[params.tone])} at {title_case(self._loc)}"
        self._open()

    def _open(self) -> None:
        setting, chars = self.params.setting, self.params.characters
        para = [_Sentence(self._rng.choice(TIME_OPENINGS[setting.time_of_day]).format(loc=self._loc), False)]
        if setting.weather is not None:
            para.append(_Sentence(self._rng.choice(WEATHER_LINES[setting.weather]), True))
        para.append(_Sentence(self._rng.choice(TONE_ATMOSPHERE[self.params.tone]), True))
        para.append(_Sentence(self._introduction(), False))
        roles = [f"{self._subj[i]} was {with_article(c.role)}" for i, c in enumerate(chars) if c.role]
        if roles:
            para.append(_Sentence("; ".join(roles) + ".", True))
        self._add_paragraph(para, None)

    def _introduction(self) -> str:
        names = [c.name for c in self.params.characters]
        if self.params.pov == "first":
            return f"I was there with {join_names(names[1:])}." if len(names) > 1 else "I was there alone."
        return f"{names[0]} was there alone." if len(names) == 1 else f"{join_names(names)} were there."

    def add_beat(self, index: int) -> None:
        """Write the paragraph for beat ``index``; its actor rotates through the characters."""
        chars = self.params.characters
        actor = index % len(chars)
        mood = chars[actor].mood
        rng = self._rng
        action = _Sentence(self._pick([f"{self._subj[actor]} {a}." for a in MOOD_ACTIONS[mood]]), False)
        beat = _Sentence(as_sentence(self.params.beats[index]), False)
        para = [action, beat] if rng.random() < 0.5 else [beat, action]
        if rng.random() < 0.55:
            line = rng.choice(MOOD_LINES[mood])
            quoted = f'"{line}"' if line[-1] in "?!" else f'"{line},"'
            para.append(_Sentence(f"{quoted} {self._subj[actor]} {rng.choice(MOOD_VERBS[mood])}.", True))
        if len(chars) > 1 and rng.random() < 0.5:
            other = rng.choice([i for i in range(len(chars)) if i != actor])
            reaction = rng.choice(REACTIONS).format(other=self._subj[other], obj=self._obj[actor])
            para.append(_Sentence(reaction, True))
        trait = chars[actor].trait
        if trait and rng.random() < 0.4:
            line = rng.choice(TRAIT_LINES).format(subj=self._subj[actor], obj=self._obj[actor], trait=trait)
            para.append(_Sentence(capitalise(line), True))
        self._add_paragraph(para, actor)

    def finish(self) -> GenerateScene.Result:
        """Close the scene, fit it to ``target_words`` and return it."""
        closing = self._rng.choice(TONE_CLOSINGS[self.params.tone]).format(loc=self._loc)
        self._add_paragraph([_Sentence(capitalise(closing), False)], None)
        self._trim()
        self._pad()
        paragraphs = [" ".join(s.text for s in para) for para in self._paragraphs]
        text = "\n\n".join(paragraphs)
        names = [c.name for c in self.params.characters]
        return GenerateScene.Result(
            title=self.title,
            text=text,
            paragraphs=paragraphs,
            word_count=count_words(text),
            characters_present=names,
            seed=self.seed,
        )

    def _pick(self, candidates: list[str]) -> str:
        """A random candidate not used yet in this scene; any of them once all are used."""
        return self._rng.choice([c for c in candidates if c not in self._used] or candidates)

    def _add_paragraph(self, sentences: list[_Sentence], actor: int | None) -> None:
        self._paragraphs.append(sentences)
        self._actors.append(actor)
        self._used.update(s.text for s in sentences)

    def _word_count(self) -> int:
        return sum(count_words(s.text) for para in self._paragraphs for s in para)

    def _trim(self) -> None:
        """Drop optional sentences, last paragraphs first, while the scene is too long."""
        limit = self.params.target_words * _TRIM_ABOVE
        words = self._word_count()
        while words > limit:
            removed = False
            for para in reversed(self._paragraphs):
                optional = [i for i, s in enumerate(para) if s.optional]
                if optional and words > limit:
                    words -= count_words(para.pop(optional[-1]).text)
                    removed = True
            if not removed:
                return  # only required sentences are left: the beats themselves are too long

    def _pad(self) -> None:
        """Add descriptive sentences round-robin to every paragraph but the closing one."""
        target = self.params.target_words
        ceiling = target * _PAD_CEILING
        words = self._word_count()
        pool = iter(self._filler_pool())
        body = len(self._paragraphs) - 1
        turn = 0
        while words < target:
            slot = turn % body
            sentence = self._gesture(slot) if turn % 2 else None
            if sentence is None or words + count_words(sentence) > ceiling:
                sentence = next((s for s in pool if words + count_words(s) <= ceiling), None)
                if sentence is None:
                    return  # the banks ran out of unused sentences that fit
            self._paragraphs[slot].append(_Sentence(sentence, True))
            self._used.add(sentence)
            words += count_words(sentence)
            turn += 1

    def _gesture(self, slot: int) -> str | None:
        """An unused mood action for the paragraph's actor, if it has one."""
        actor = self._actors[slot]
        if actor is None:
            return None
        moves = (f"{self._subj[actor]} {m}." for m in MOOD_ACTIONS[self.params.characters[actor].mood])
        return next((s for s in moves if s not in self._used), None)

    def _filler_pool(self) -> list[str]:
        setting, rng = self.params.setting, self._rng
        details = [*TIME_DETAILS[setting.time_of_day], *TONE_DETAILS[self.params.tone], *GENERIC_DETAILS]
        details += WEATHER_DETAILS.get(setting.weather or "", ())
        openers = {clause: rng.sample(OPENERS, len(OPENERS)) for clause in details}
        # Each detail once before any comes back with another opener; two-detail sentences last.
        rounds = [(r, c) for r in range(len(OPENERS)) for c in rng.sample(details, len(details))]
        singles = [capitalise(openers[c][r] + c) + "." for r, c in rounds]
        combos = list(permutations(details, 2))
        n = len(combos)
        pairs = [f"{capitalise(o + x)}, and {y}." for o in OPENERS for x, y in rng.sample(combos, n)]
        return [s for s in singles + pairs if s not in self._used]
