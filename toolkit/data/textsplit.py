"""A fast rule-based sentence splitter for scientific prose (arXiv abstracts, QA answers).

`split_sentences(text)` returns the sentences of `text` with whitespace collapsed. It is a single
regular-expression pass plus a few checks per candidate boundary, so a few thousand abstracts take
well under a second (pysbd is about two orders of magnitude slower on the same text).

A boundary is `.`, `?`, `!`, `...` or `…`, optionally followed by closing quotes/brackets (and the
end of a math span), then whitespace. It is *not* a boundary when:

* it lies inside LaTeX math: `$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]` are never split (a span
  that itself ends with a period, `$O(n).$ We ...`, still ends the sentence);
* the period has no whitespace after it (`3.5%`, `0.82`, `v2.1`, `e.g.,`, `arXiv.org`);
* the next word starts with a lowercase letter (`approx. the`, `Fig. 2 shows ... et al. proposed`);
* the word before the period is an abbreviation that never ends a sentence (`e.g.`, `i.e.`, `cf.`,
  `vs.`, `Fig.`, `Eq.`, `Sec.`, `Dr.`, `approx.`, ...; `No.`, `p.`, `pp.`, `Vol.`, `Ex.` only
  before a number);
* the word before is an abbreviation that *may* end a sentence (`et al.`, `resp.`, `Jr.`, `Inc.`),
  a dotted acronym (`U.S.`) or an initial (`J. Smith`) and the next word is not a typical
  sentence opener (`We`, `This`, `In`, `However`, ...);
* it is inside a journal citation: after a journal abbreviation (`Phys.`, `Rev.`, `Lett.`, `Opt.`,
  `Soc.`, `Proc.`, `Natl.`, `Acad.`, `Sci.`, `Math.`, `J.`, ...), or after a capitalised word that
  sits between such abbreviations (`Soc. Am. A`, `Class. Quant. Grav.`), unless a sentence opener
  follows: `(J. Opt. Soc. Am. A 4, 433 (1987))` and `Phys. Rev. B` stay whole;
* it is inside a bracketed citation: a `[...]` or `(...)` closed later in the paragraph that holds
  a year, pages (`21-26`), an arXiv id or an author's initial (`[J. Blanc, ... 344 (2007), 21-26.]`,
  `[A.-B. Smith and C. Jones]`). An interval (`[0, +\\infty)`, `(0, 1]`) is no bracket pair, and a
  bracket never closed is ignored: the text after it splits as if it were not there.

A single capital letter (or a hyphenated pair, `J.-P.`) before the period is an initial (`by J. Smith`) unless the word before it
is an ordinary lowercase word: then it is a variable ending the sentence (`on a manifold X. Any`).
A `$` whose "math span" would run over prose (a sentence end and three plain words, as in
`costs $5 per unit. We then pay $10`) is taken as a stray dollar, not math, and pairing goes on
from the next `$`. `?`, `!` and ellipses end a sentence unless a lowercase word follows. A blank
line always ends a sentence. Known limit: a sentence that starts with a lowercase word
(`word2vec is ...`) is joined to the one before.
"""

from __future__ import annotations

import bisect
import re

__all__ = ["split_sentences", "NEVER_END", "BEFORE_NUMBER", "MAY_END", "JOURNAL", "SENTENCE_OPENERS"]

# Abbreviations (lowercase, without the final period) after which a sentence never ends.
NEVER_END = frozenset(
    """
    e.g i.e cf vs viz fig figs eq eqs eqn eqns sec secs sect tab tabs ref refs thm thms lem prop
    cor def defn alg app apps approx dr mr mrs ms prof st mt ca w.r.t a.k.a esp incl ch chap
    """.split()
)
# ... and those that are abbreviations only when a number follows ("No. 5", "p. 12", "Vol. 3").
BEFORE_NUMBER = frozenset("no nos p pp vol vols ex art nr jan feb mar apr jun jul aug sep sept oct nov dec".split())
# Abbreviations that may well end a sentence: split only before a typical sentence opener.
MAY_END = frozenset("al resp jr sr inc ltd co corp bros cit ph.d".split())
# Journal-title abbreviations (as written, capitalised): a period after them is part of a citation
# unless a sentence opener follows ("Phys. Rev. B", "Proc. Natl. Acad. Sci. USA", "Ann. Math. 150").
JOURNAL = frozenset(
    """
    Phys Rev Lett Opt Soc Proc Natl Acad Sci Math Commun Comm Nucl Chem Appl Theor Prog Europhys
    Astrophys Astron Amer Quant Grav Mech Biol Biophys Geophys Electron Instrum Res Sov Zh Eksp Teor
    Fiz Acta Cryst Mater Chim Rep Mol Struct Comput Probab Geom Topol Algebr Funct Anal Inst Univ
    Ser Jpn Trans Adv Invent Ann Nat Mon Not Roy Lond Astrophys Cosmol Condens Matt Stat Statist
    Inf Syst Eng Intl Int Mod Phil Philos Rend Sem Proc Bull Nuovo Cim Ztschr Zeit Soviet Publ Ges
    Wiss Akad Nachr Lect Gen Rel Sect Suppl Jour Cond Optic Photon Quantum
    """.split()
)

SENTENCE_OPENERS = frozenset(
    """
    We Our Us In The This These That Those There Here It Its They Their Then Thus Hence Therefore
    However Moreover Furthermore Finally Additionally Also Further Consequently Nevertheless
    Nonetheless Instead Meanwhile Notably Importantly Specifically Similarly Likewise Indeed
    Overall Experiments Experimental Empirical Results Extensive Using To For On As By An Such
    Both Unlike Given While Although Though Despite Based Existing Recent Most Many Several
    Previous Current First Second Third Lastly Next Each One All Some Code Data Our When If
    Since Because With Through Compared He She His Her You Your My Unfortunately Surprisingly
    Interestingly Second Third Fourth Lastly Last Section Sections Table Figure Appendix
    Theorem Lemma Proof Note Let Suppose Consider Assume Define Recall Example Further
    A Any Every No None Numerical Applications Simulations Theoretical New Recently Previously
    Currently Today Other Another Where What How Why Which Can Do Does Is Are Was Were Has Have
    Without Within Beyond After Before Under Among Along Following Motivated Inspired Building
    Combining Leveraging Applying Analysis Evaluation Training Learning Models Methods Moreover
    Additionally Two Three Four Five Ten Numerous Various Such Thereby Subsequently Altogether
    """.split()
)
# Lowercase words that put a name, not a variable, after them: "by J. Smith", "and A. Jones".
NAME_BEFORE = frozenset(
    """
    by and of with to from thank thanks following after see cf cf. e.g. i.e. & prof. dr. mr. ms.
    mrs. professor authors author conjecture conjectured proposed introduced due
    """.split()
)

_OPENERS = "\"'“‘«([{"
_MATH = re.compile(
    r"\$\$.+?\$\$"  # display $$...$$
    r"|\\\[.+?\\\]"  # display \[...\]
    r"|\\\(.+?\\\)"  # inline \(...\)
    r"|(?<!\\)\$(?:\\.|[^$\\])+\$",  # inline $...$ (escaped \$ is not a delimiter)
    re.S,
)
# punctuation, closing quotes/brackets or math delimiters, then whitespace (the lookahead lets the
# regex engine skip ahead to the next punctuation mark: twice as fast as trying the branches everywhere)
_CANDIDATE = re.compile(r"(?=[.?!…])(…|[.?!]+)((?:[\"'”’»)\]}]|\$\$?|\\\]|\\\))*)( +)")
_PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n")
_DOTTED = re.compile(r"(?:[A-Za-z]\.-?)+[A-Za-z]")  # U.S., a.k.a, and hyphenated initials (J.-P.)
_MATH_END = re.compile(r"[.?!]\s*(?:\$\$?|\\\]|\\\))$")
# inside a would-be $...$ span: a sentence end, and a run of three plain words
_SENTENCE_INSIDE = re.compile(r"[.?!] +[A-Z]")
_PROSE_RUN = re.compile(r"(?<![\\\w])[A-Za-z][a-z]+ [A-Za-z][a-z]+ [a-z]{2,}\b")
_BRACKET = re.compile(r"[\[\]()]")
_PAIR = {"]": "[", ")": "("}
# what makes a bracket a citation: a year, pages, an arXiv id, or an author's initial before a name
_CITATION = re.compile(r"\b(?:1[6-9]|20)\d\d\b|\d+ ?[-–] ?\d+|arXiv|(?<![\w.])[A-Z]\.(?:-[A-Z]\.)? ?[A-Z][a-z]")
MAX_CITATION = 600  # characters: a longer bracket is prose in brackets, not a reference


def split_sentences(text: str) -> list[str]:
    """Split `text` into sentences (whitespace collapsed, empty pieces dropped).

    Args:
        text: Any prose; LaTeX math, abbreviations, decimals and initials are handled (see module doc).

    Returns:
        The sentences in order. `"".join` of them with single spaces gives back the collapsed text.
    """
    if not text:
        return []
    sentences: list[str] = []
    paragraphs = _PARAGRAPH.split(text) if "\n" in text else (text,)
    for para in paragraphs:
        para = " ".join(para.split())
        if para:
            sentences.extend(_split_paragraph(para))
    return sentences


def _math_spans(text: str) -> list[tuple[int, int]]:
    """The LaTeX math spans of a paragraph; a `$` whose span would run over prose is a stray dollar."""
    spans: list[tuple[int, int]] = []
    pos = 0
    while (m := _MATH.search(text, pos)) is not None:
        s, e = m.span()
        if text[s] == "$" and text[s + 1] != "$" and _looks_like_prose(text, s + 1, e - 1):
            pos = s + 1  # not math: pair the next dollar instead
            continue
        spans.append((s, e))
        pos = e
    return spans


def _looks_like_prose(text: str, start: int, end: int) -> bool:
    return _SENTENCE_INSIDE.search(text, start, end) is not None and _PROSE_RUN.search(text, start, end) is not None


def _split_paragraph(text: str) -> list[str]:
    spans: list[tuple[int, int]] = []
    if "$" in text or "\\" in text:
        spans = _math_spans(text)
    starts = [s for s, _ in spans]
    cites = _citations(text, spans) if "[" in text or "(" in text else []
    cite_starts = [s for s, _ in cites]

    cuts: list[int] = []
    for m in _CANDIDATE.finditer(text):
        boundary = m.end(2)
        if spans and _inside(spans, starts, boundary):
            continue  # inside math
        if cites and _inside(cites, cite_starts, boundary):
            continue  # inside a bracketed citation
        nxt = m.end(3)
        if nxt >= len(text):
            continue
        if _is_boundary(text, m.start(1), m.group(1), nxt):
            cuts.append(boundary)
    # a math span that ends with a period, directly followed by a space: "... is $O(n).$ We"
    for s, e in spans:
        if e < len(text) - 1 and text[e] == " " and _MATH_END.search(text, s, e):
            if e not in cuts and _next_word(text, e + 1)[:1].isupper():
                cuts.append(e)
    if not cuts:
        return [text]
    cuts.sort()
    out = []
    prev = 0
    for c in cuts:
        piece = text[prev:c].strip()
        if piece:
            out.append(piece)
        prev = c
    tail = text[prev:].strip()
    if tail:
        out.append(tail)
    return out


def _inside(spans: list[tuple[int, int]], starts: list[int], pos: int) -> bool:
    """Whether `pos` lies strictly inside one of `spans` (sorted by start, not overlapping)."""
    i = bisect.bisect_left(starts, pos) - 1
    return i >= 0 and spans[i][0] < pos < spans[i][1]


def _citations(text: str, math: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The outermost bracket pairs of a paragraph that hold a citation (see module doc), sorted.

    Brackets inside math are skipped; a `]` closing a `(` or a `)` closing a `[` is an interval,
    which closes its opener without making a pair; a bracket never closed makes none."""
    math_starts = [s for s, _ in math]
    stack: list[tuple[str, int]] = []
    pairs: list[tuple[int, int]] = []
    for m in _BRACKET.finditer(text):
        pos, ch = m.start(), m.group()
        if math and _inside(math, math_starts, pos):
            continue
        if ch in "[(":
            stack.append((ch, pos))
        elif stack:
            opener, start = stack.pop()
            if opener == _PAIR[ch] and pos - start <= MAX_CITATION and _CITATION.search(text, start + 1, pos):
                pairs.append((start, pos + 1))
    outer: list[tuple[int, int]] = []
    for start, end in sorted(pairs):
        if not outer or start >= outer[-1][1]:  # a pair inside a kept one adds nothing
            outer.append((start, end))
    return outer


def _next_word(text: str, pos: int) -> str:
    end = text.find(" ", pos)
    word = text[pos:] if end < 0 else text[pos:end]
    return word.lstrip(_OPENERS)


def _word_before(text: str, start: int) -> str:
    """The word ending just before position `start` (which follows a space), openers stripped."""
    if start < 2:
        return ""
    return text[text.rfind(" ", 0, start - 1) + 1 : start - 1].lstrip(_OPENERS)


def _is_boundary(text: str, punct_at: int, punct: str, nxt: int) -> bool:
    word = _next_word(text, nxt)
    first = word[:1]
    if first.islower():
        return False
    if punct != ".":  # ? ! ... …
        return True
    start = text.rfind(" ", 0, punct_at) + 1
    token = text[start:punct_at].lstrip(_OPENERS)
    if not token:
        return True
    low = token.lower()
    if low in NEVER_END:
        return False
    if low in BEFORE_NUMBER and first.isdigit():
        return False
    opener = word.rstrip(",;:")
    if _in_citation(text, token, start, word):
        return opener in SENTENCE_OPENERS and len(opener) > 1
    if len(token) == 1 and token.isupper():
        before = _word_before(text, start)
        if before.isalpha() and before.islower() and before not in NAME_BEFORE:
            return True  # a variable: "on a manifold X. Any"
        return opener in SENTENCE_OPENERS and not opener.endswith(".")  # an initial: "by J. Smith"
    if low in MAY_END or _DOTTED.fullmatch(token) is not None:  # et al., resp., U.S., a.k.a
        return opener in SENTENCE_OPENERS and not opener.endswith(".")
    return True


def _in_citation(text: str, token: str, start: int, word: str) -> bool:
    """Whether `token.` is part of a journal citation: a journal abbreviation, or a capitalised word
    between them (`Soc. Am. A`, `Class. Quant. Grav.`)."""
    if token in JOURNAL:
        return True
    if not (token[:1].isupper() and token.isalpha()):
        return False
    if word.endswith(".") and (word[:-1] in JOURNAL or word == "J."):
        return True
    before = _word_before(text, start)
    return before.endswith(".") and before[:-1] in JOURNAL
