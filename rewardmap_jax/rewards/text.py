"""Text rules of the official RewardMap / ReasonMap code, reimplemented (no model, no JAX).

Everything here is a pure function of strings. The rules follow the official
sources (docs/rewards.md restates them) ([RW] `verl/utils/reward_score/reason_map.py` and
`reasonmap_utils.py`; [RM] `main.py`, `tools.py`), including their quirks, because the reward
must score a completion exactly as the official code does:

* two `clean_string` variants: the RewardMap one (reward) and the ReasonMap one (metrics);
* answer extraction for the VQA types (`\\boxed{}` / "the answer is" fallbacks, LaTeX stripping);
* route-plan sections split on "--" with the official field regexes, in the three flavours the
  official code uses (reward: lenient key check; accuracy/metric: case-sensitive key check;
  long questions: arrival and via-stop fields read per line).
"""

from __future__ import annotations

import dataclasses
import functools
import re

from rewardmap_jax.mapworld.cleaner import clean_rm  # noqa: F401  (ReasonMap's cleaner)

# Annotations the datasets append to station names; the official loaders drop them first.
STATION_ANNOTATIONS: tuple[str, ...] = (
    " (Transfer Station)",
    " (Branch-starting Station)",
    "（换乘站）",
    "（支线起始站）",
)
# Beijing lines the models name by their Chinese alias ([RW]/[RM] special cases).
ROUTE_ALIASES: tuple[tuple[str, str], ...] = (("八通", "Line 1"), ("大兴", "Line 4"))
ANSWER_FLAGS: tuple[str, ...] = (
    "the final answer is",
    "the answer is",
    "the correct answer is",
    "the answer should be",
)
WRONG = "Wrong"  # what the official parser stores when a field regex does not match
NUM_VIA_MARKER = "Number of Via Stops: "  # the official long-answer field splits
VIA_MARKER = "Via Stops: "

_PAREN_RE = re.compile(r"[\(\（][^\)\）]*[\)\）]")
_SPACE_DASH_RE = re.compile(r"[\s\-]+")
_BOXED_RE = re.compile(r"oxed{(.*)}", flags=re.S)
_ROUTE_RE = re.compile(r"Route Name: (.*?)\n")
_DEPART_RE = re.compile(r"Departure Stop: (.*?)\n")
_ARRIVE_RE = re.compile(r"Arrival Stop: (.*?)\n")
_DIGITS_RE = re.compile(r"\d+")
_STOPS_RE = re.compile(r"Stops\s*:\s*\[", flags=re.IGNORECASE)
_LEADING_AND_RE = re.compile(r"^(and\s+)", flags=re.IGNORECASE)

_RW_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    ("Metro", ""), ("metro", ""), (",", ""), ("*", ""), ("\n", ""), ("'", ""),
    ("Univ.", "University"), ("Univ", "University"), ("Tech.", "Technology"),
    ("Tech", "Technology"), ("road", "lu"), ("Road", "lu"),
    ("Station", ""), ("station", ""), ("Asian Games Village", "yayuncun"),
)  # fmt: skip


# Names repeat across a batch (every record of a city shares its stations): memoise the cleaners.
_CLEAN_CACHE_SIZE = 1 << 16


@functools.lru_cache(maxsize=_CLEAN_CACHE_SIZE)
def clean_rw(s: str) -> str:
    """RewardMap's `clean_string` (the reward's name normaliser), rule for rule."""
    for old, new in _RW_REPLACEMENTS:
        s = s.replace(old, new)
    if s.endswith("站"):
        s = s[:-1]
    s = _PAREN_RE.sub("", s)
    return _SPACE_DASH_RE.sub("", s).lower()


def strip_annotations(name: str) -> str:
    """A metro station name without the dataset's "(Transfer Station)"-style annotations."""
    for note in STATION_ANNOTATIONS:
        name = name.replace(note, "")
    return name


def clean_metro(metro: dict[str, list[str]]) -> dict[str, list[str]]:
    """The metro dict as the official code sees it: annotations stripped, null lines dropped."""
    return {
        line: [strip_annotations(s) for s in stations]
        for line, stations in metro.items()
        if stations is not None
    }


def canonical_route_name(name: str) -> str:
    """Applies the official Beijing alias rules (later rules win, as in the official code)."""
    for alias, line in ROUTE_ALIASES:
        if alias in name:
            name = line
    return name


# ---------------------------------------------------------------------------------------------
# VQA answers


def _answer_after_flags(text: str) -> str:
    """The official fallback when there is no `\\boxed{`: text after the last answer phrase."""
    for flag in ANSWER_FLAGS:
        for variant in (flag, flag.replace("the", "The")):
            found = variant in text
            text = text.split(variant)[-1].strip()
            if found:
                text = text.split("\n")[0].split(". ")[0]
    return text


def _strip_latex(ans: str) -> str:
    """The LaTeX clean-up `find_math_answer` applies to the boxed content (and its helpers)."""
    for old, new in (
        (" ", ""), ("\\,", ""), ("∞", "\\infty"), ("+\\infty", "\\infty"), ("\\\\", "\\"),
        ("\n", ""), ("\\text", ""), ("\\mbox", ""), ("bmatrix", "pmatrix"), ("\\left", ""),
        ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("{m}^3", ""), ("m^3", ""),
        ("{units}", ""), ("units", ""), ("{km}", ""), ("km", ""),
        # the second pass of the official helper (`_strip_string`)
        ("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
        ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""),
        ("$", ""),
    ):  # fmt: skip
        ans = ans.replace(old, new)
    ans = ans.split("\\text{ ")[0]
    ans = ans.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not ans:
        return ans
    if ans[0] == ".":
        ans = "0" + ans
    for sep in ("=", "\\approx"):
        parts = ans.split(sep)
        if len(parts) == 2:
            ans = parts[-1]
    ans = ans.replace(" ", "")
    # The official helper also rewrites sqrt/frac/"a/b"/"0.5" into LaTeX fractions. Those inputs
    # and outputs are never yes/no, a-d or an integer, so skipping them cannot change a verdict.
    return ans


def find_boxed_answer(s: str) -> str:
    """`find_math_answer`: last `\\boxed{...}` content (or the text), lowercased and cleaned."""
    s = s.lower().replace("{}", "")
    found = _BOXED_RE.findall(s)
    ans = found[-1] if found else s
    close = ans.find("}")
    if close != -1:
        open_ = ans.find("{")
        if open_ == -1 or close < open_:
            ans = ans.split("}")[0]
    ans = ans.split("=")[-1].split("\\approx")[-1]
    return _strip_latex(ans)


def extract_vqa_answer(response: str) -> str:
    """The answer string the official reward compares with the ground truth (lowercased)."""
    text = response
    n_boxed = text.count("oxed{")
    if n_boxed == 0:
        text = _answer_after_flags(text)
    elif n_boxed > 1:
        text = "\\boxed{" + text.split("oxed{")[-1]
    return find_boxed_answer(text).rstrip(".").lstrip(":").strip()


INVALID_ANSWER = -1  # answer code of an answer that cannot be right for the question type


def answer_code(task_type: str, answer: str, int_bound: int = 2**31 - 1) -> int:
    """Maps an extracted answer to the integer the ground truth is stored as, or `INVALID_ANSWER`.

    TorF: yes -> 1, no -> 0. Counting1: a..d -> 0..3. Counting2/3: Python `int()` of the text
    (as the official code; integers outside +-`int_bound` or below 0 cannot match a count).
    """
    low = answer.lower()
    if task_type.startswith("TorF"):
        return {"yes": 1, "no": 0}.get(low, INVALID_ANSWER)
    if task_type == "Counting1":
        return {"a": 0, "b": 1, "c": 2, "d": 3}.get(low, INVALID_ANSWER)
    if task_type in ("Counting2", "Counting3"):
        try:
            value = int(answer)
        except (ValueError, TypeError):
            return INVALID_ANSWER
        return value if 0 <= value <= int_bound else INVALID_ANSWER
    raise ValueError(f"answer_code: {task_type!r} is not a VQA question type")


def extract_stops(text: str) -> list[str]:
    """The Counting1 detail format `Stops: [a, b, ...]` (`extract_stops_no_quotes` rules)."""
    m = _STOPS_RE.search(text)
    if not m:
        return []
    start = text.find("[", m.start())
    depth, end = 0, None
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                end = i
                break
    if end is None:
        return []
    tokens, buf, paren = [], [], 0
    for ch in text[start + 1 : end].strip():
        if ch == "(":
            paren += 1
        elif ch == ")":
            paren = max(paren - 1, 0)
        elif ch == "," and paren == 0:
            tokens.append("".join(buf).strip())
            buf = []
            continue
        buf.append(ch)
    tokens.append("".join(buf).strip())
    out = []
    for t in tokens:
        t = _LEADING_AND_RE.sub("", t.strip().strip(".").strip(";")).strip()
        if t and t not in ("...", "…"):
            out.append(t)
    return out


# ---------------------------------------------------------------------------------------------
# Route plans


@dataclasses.dataclass(frozen=True)
class Section:
    """One parsed "--" section of a route plan, fields exactly as the official parser keeps them.

    `departure`/`arrival` are already cleaned once (or the literal `WRONG`), as in the official
    dicts; comparisons clean them again. `strict` says whether the section also passes the
    case-sensitive key check of the accuracy rule; `regex_ok` whether every field regex matched.
    `num_via` / `via` hold the official remainder after "Number of Via Stops: " / "Via Stops: "
    (the whole chunk when the marker is missing, as the official split gives); `long_found`
    says whether the marker was there.
    """

    route: str
    departure: str
    arrival: str
    strict: bool
    regex_ok: bool
    num_via: str | None = None
    via: str | None = None
    long_found: bool = False


_KEYS = ("Route Name:", "Departure Stop:", "Arrival Stop:")
_KEYS_LOWER = tuple(k.lower() for k in _KEYS)


def parse_sections(
    text: str,
    clean=clean_rw,
    lenient_keys: bool = True,
    arrival: str = "remainder",
    long_field: str | None = None,
) -> tuple[list[Section], int]:
    """Splits a route plan on "--" into official sections.

    Args:
      clean: the name normaliser applied to the departure/arrival fields (`clean_rw`/`clean_rm`).
      lenient_keys: reward rule (keys checked case-insensitively) when True; accuracy/metric rule
        (case-sensitive) when False. Either way `Section.strict` records the case-sensitive check.
      arrival: "remainder" (text after "Arrival Stop:", the reward and the short metric),
        "regex" (`Arrival Stop: (.*?)\\n`, the long metric) or "line" (the first line of the
        remainder: the reward's `arrival_field="line"` option for long-template answers).
      long_field: None, "num_via" ("Number of Via Stops: " remainder) or "via" ("Via Stops: ").

    Returns:
      (sections, n_chunks): the kept sections and the number of non-empty "--" chunks.
    """
    sections: list[Section] = []
    n_chunks = 0
    for chunk in text.split("--"):
        if not chunk.strip():
            continue
        n_chunks += 1
        strict = all(k in chunk for k in _KEYS)
        if not strict:
            if not lenient_keys:
                continue
            low = chunk.lower()
            if not all(k in low for k in _KEYS_LOWER):
                continue
        rm = _ROUTE_RE.search(chunk)
        dm = _DEPART_RE.search(chunk)
        route = rm.group(1).strip() if rm else WRONG
        departure = clean(dm.group(1)) if dm else WRONG
        regex_ok = rm is not None and dm is not None
        if arrival == "remainder":
            arr = clean(chunk.split("Arrival Stop:")[-1].strip())
        elif arrival == "line":
            arr = clean(chunk.split("Arrival Stop:")[-1].strip().split("\n")[0])
        else:
            am = _ARRIVE_RE.search(chunk)
            arr = clean(am.group(1)) if am else WRONG
            regex_ok = regex_ok and am is not None
        num_via = via = None
        found = False
        if long_field == "num_via":
            num_via = chunk.split(NUM_VIA_MARKER)[-1].strip()
            found = NUM_VIA_MARKER in chunk
        elif long_field == "via":
            via = chunk.split(VIA_MARKER)[-1].strip()
            found = VIA_MARKER in chunk
        sections.append(Section(route, departure, arr, strict, regex_ok, num_via, via, found))
    return sections, n_chunks


def first_int(text: str) -> int:
    """The first run of digits in `text` as an int, 0 when there is none (official rule)."""
    m = _DIGITS_RE.search(text)
    return int(m.group()) if m else 0


def has_think_block(text: str, open_tag: str = "<think>", close_tag: str = "</think>") -> bool:
    """True when the completion opens with one thinking block that is closed exactly once."""
    body = text.lstrip()
    return (
        body.startswith(open_tag)
        and body.count(open_tag) == 1
        and body.count(close_tag) == 1
        and body.index(close_tag) > len(open_tag) - 1
    )
