"""Plain-text helpers shared by the reference executables: sentences, words, stop words."""

from __future__ import annotations

import re

# Abbreviations that never end a sentence: a title is always followed by a name.
_NEVER_FINAL = frozenset(
    "mr mrs ms mx dr prof rev fr gen capt cpt sgt lt col maj hon st mt ft e.g i.e cf vs viz approx al".split()
)
# Abbreviations that precede a number ("No. 5", "Fig. 3"); "no" is also a word, so only then.
_BEFORE_NUMBER = frozenset("no nos fig figs vol vols p pp ch sec art eq".split())
# Abbreviations that may or may not end a sentence ("... and so on, etc. The next ...").
_AMBIGUOUS = frozenset("etc inc ltd co corp jr sr bros a.m p.m u.s u.k u.n e.u".split())
_DOTTED_ACRONYM = re.compile(r"^(?:[a-z]\.)+[a-z]$")

STOP_WORDS = frozenset(
    """
    a about above after again against all almost also although am among an and another any anyone anything
    are aren't around as at be because been before being below between both but by can can't cannot could
    couldn't did didn't do does doesn't doing don't down during each either else even ever every few for
    from further get gets got had hadn't has hasn't have haven't having he he'd he'll her here hers herself
    him himself his how however i i'd i'll i'm i've if in into is isn't it it's its itself just let let's
    like made make many may me might more most much must mustn't my myself neither never no none nor not now
    of off often on once one only or other others ought our ours ourselves out over own per quite rather
    really said same say says shall shan't she she'd she'll should shouldn't since so some something still
    such than that that's the their theirs them themselves then there there's these they they'd they'll
    they're they've this those though through thus to too toward towards under until up upon us very was
    wasn't we we'd we'll we're we've were weren't what what's when where whether which while who who's whom
    whose why will with within without won't would wouldn't yet you you'd you'll you're you've your yours
    yourself yourselves
    """.split()
)

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*|\n(?=[ \t]*(?:[-*•]|\d+[.)])\s)")
# Terminal punctuation, then any closing quotes/brackets, then whitespace or the end. The
# lookbehind and possessive quantifiers keep long runs like "?!?!..." linear, not quadratic.
_CANDIDATE = re.compile(r"(?<![.!?…])(?:\.{2,}+|…|[!?][!?.…]*+|\.)[\"'”’»)\]]*+(?=\s|$)")
_OPENERS = "\"'“‘«(["
# What follows a candidate: whitespace, opening quotes/brackets, then the next word (if any).
_NEXT_WORD = re.compile(r"\s*[\"'“‘«(\[]*(\w*)")
_LAST_TOKEN = re.compile(r"(\S+)$")
# Abbreviations are short, so the token before a period is looked up within a bounded window;
# scanning back to the sentence start instead is quadratic on pathological input ("Mr. Mr. ...").
_TOKEN_WINDOW = 40
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_TITLE_SMALL_WORDS = frozenset("a an and as at but by for in of on or the to with".split())
_ARTICLES = frozenset("a an the my his her their our your".split())
_SENTENCE_CLOSERS = ".!?\"'”’…)"


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences, whitespace inside each collapsed to single spaces.

    Blank lines and list bullets are hard breaks. Within a paragraph a sentence ends at
    ``.``, ``!``, ``?`` or an ellipsis (plus closing quotes/brackets) followed by a word
    that does not start in lower case, unless the period belongs to a known abbreviation,
    an initial ("J. R. R.") or a decimal number. Fragments without letters or digits are dropped.
    """
    sentences: list[str] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        start = 0
        for match in _CANDIDATE.finditer(paragraph):
            if _is_boundary(paragraph, start, match):
                sentences.append(paragraph[start : match.end()])
                start = match.end()
        sentences.append(paragraph[start:])
    cleaned = (" ".join(s.split()) for s in sentences)
    return [s for s in cleaned if any(ch.isalnum() for ch in s)]


def _is_boundary(paragraph: str, start: int, match: re.Match[str]) -> bool:
    next_word = _NEXT_WORD.match(paragraph, match.end())
    following = next_word.group(1) if next_word else ""
    if not following:
        return True  # end of paragraph, or a dash/symbol starts the next part
    if following[0].islower():
        # '"Stop!" she said.' and 'wait... then' continue the sentence.
        return False
    if match.group().rstrip("\"'”’»)]") != ".":
        return True
    token_match = _LAST_TOKEN.search(paragraph, max(start, match.start() - _TOKEN_WINDOW), match.start())
    if token_match is None:
        return True
    token = token_match.group(1).lstrip(_OPENERS)
    word = token.lower()
    if word in _NEVER_FINAL:
        return False
    if word in _BEFORE_NUMBER:
        return not following[0].isdigit()
    if len(token) == 1 and token.isupper():
        return False  # an initial: "J. R. R. Tolkien"
    if word in _AMBIGUOUS or _DOTTED_ACRONYM.match(word):
        # "in the U.S. The economy" ends a sentence, "the U.S. Army" does not: a capitalised
        # function word is the usual sign that a new sentence began.
        return following.lower() in STOP_WORDS
    return True


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters of any script, inner apostrophes kept)."""
    result: list[str] = []
    for raw in _WORD.findall(text):
        word = raw.lower().replace("’", "'")
        if word.endswith("'s") and word not in STOP_WORDS:
            word = word[:-2]  # possessive: "company's" counts as "company"
        result.append(word)
    return result


def content_words(text: str) -> list[str]:
    """The words of ``text`` that carry meaning: stop words and single letters dropped."""
    return [w for w in words(text) if len(w) > 1 and w not in STOP_WORDS]


def count_words(text: str) -> int:
    """Whitespace-separated words, the way a writer counts them."""
    return len(text.split())


def capitalise(text: str) -> str:
    """``text`` with its first character upper-cased and the rest untouched (unlike str.capitalize)."""
    return text[:1].upper() + text[1:]


def title_case(text: str) -> str:
    """Capitalise each word except short function words; existing capitals stay ("NYC")."""
    return " ".join(w if w.lower() in _TITLE_SMALL_WORDS else capitalise(w) for w in text.split())


def as_sentence(text: str) -> str:
    """``text`` with whitespace collapsed, a capital first letter and a closing full stop if it had none."""
    text = capitalise(" ".join(text.split()))
    return text if not text or text[-1] in _SENTENCE_CLOSERS else text + "."


def with_article(noun_phrase: str) -> str:
    """'ferryman' -> 'the ferryman'; 'a retired spy' stays as it is."""
    return noun_phrase if noun_phrase.split()[0].lower() in _ARTICLES else f"the {noun_phrase}"


def join_names(names: list[str]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def phrase_bank(spec: str) -> dict[str, tuple[str, ...]]:
    """Parse ``key: phrase | phrase`` lines; an indented line continues the key above it.

    Keeps long lists of prose phrases readable, one key per line, instead of nested tuples.
    """
    bank: dict[str, tuple[str, ...]] = {}
    key = ""
    for line in spec.strip().splitlines():
        if not line[:1].isspace():
            key, _, line = line.partition(":")
        bank[key] = bank.get(key, ()) + tuple(p.strip() for p in line.split("|") if p.strip())
    return bank
