"""Hand-built and randomly generated records and completions for the reward tests.

`hand_metro()` is the small network of the hand-worked tests:

    Line 1: A - B - C - D        (B is a transfer station, annotated as in the real data)
    Line 2: E - B - F
    Line 3: F - G - H
"""

from __future__ import annotations

import random

from rewardmap_jax.mapworld.records import DIFFICULTIES, Record


def hand_metro() -> dict[str, list[str]]:
    return {
        "Line 1": ["A", "B (Transfer Station)", "C", "D"],
        "Line 2": ["E", "B (Transfer Station)", "F (Transfer Station)"],
        "Line 3": ["F (Transfer Station)", "G", "H"],
    }


def planning(s1, s2, q, difficulty="easy", template="short", routes=None, metro=None, uid=None):
    return Record(
        uid=uid or f"plan-{s1}-{s2}-{q}",
        type="planning",
        question=f"How do I get from {s1} to {s2}?",
        answer=None,
        figure=None,
        metro=metro or hand_metro(),
        routes=routes or {},
        station_1=s1,
        station_2=s2,
        difficulty_city=difficulty,
        question_transfer_count=q,
        template=template,
    )


def vqa(task_type, answer, difficulty="easy", s1="A", s2="D", metro=None):
    return Record(
        uid=f"{task_type}-{answer}",
        type=task_type,
        question="?",
        answer=answer,
        figure=None,
        metro=metro or hand_metro(),
        station_1=s1,
        station_2=s2,
        difficulty_city=difficulty,
    )


def section(line, dep, arr, extra=""):
    return f"Route Name: {line}\nDeparture Stop: {dep}\nArrival Stop: {arr}\n{extra}"


def plan_text(sections, sep="--\n"):
    """Sections [(line, dep, arr), ...] in the official answer format."""
    return sep.join(section(*s) for s in sections)


# ---------------------------------------------------------------------------------------------
# Random worlds for the parity test

_WORDS = [
    "Park", "Harbor", "Univ.", "Tech", "Central", "North", "South", "Road", "Station", "Mill",
    "Gate", "Bridge", "Asian Games Village", "O'Hare", "Old-Town", "Kings", "Lake", "Hill",
    "西直门", "东四站", "Port", "Metro Center", "Plaza (East)", "Market",
]  # fmt: skip
_LINE_NAMES = ["Line 1", "Line 2", "Line 4", "Red Line", "Blue Line", "Circle Line", "Line 12"]


def random_metro(rng: random.Random) -> dict[str, list[str]]:
    """2-5 lines over a shared pool of names; annotations on some stations as the real data."""
    pool = sorted({f"{rng.choice(_WORDS)} {rng.choice(_WORDS)}" for _ in range(40)})
    lines = rng.sample(_LINE_NAMES, rng.randint(2, 5))
    metro: dict[str, list[str]] = {}
    for line in lines:
        stations = rng.sample(pool, rng.randint(3, 8))
        metro[line] = [s + " (Transfer Station)" if rng.random() < 0.15 else s for s in stations]
    return metro


def _strip(s: str) -> str:
    return s.replace(" (Transfer Station)", "")


def random_plan(rng: random.Random, metro: dict[str, list[str]], max_legs: int = 4):
    """A valid chained plan [(line, dep, arr), ...]: a walk that transfers at shared stations."""
    line = rng.choice(list(metro))
    stations = [_strip(s) for s in metro[line]]
    cur = rng.choice(stations)
    plan = []
    for _ in range(rng.randint(1, max_legs)):
        stations = [_strip(s) for s in metro[line]]
        nxt = rng.choice([s for s in stations if s != cur] or stations)
        plan.append((line, cur, nxt))
        cur = nxt
        others = [k for k in metro if k != line and cur in [_strip(s) for s in metro[k]]]
        if not others:
            break
        line = rng.choice(others)
    return plan


def random_planning_record(rng: random.Random, i: int) -> tuple[Record, list]:
    metro = random_metro(rng)
    plan = random_plan(rng, metro)
    q = len(plan) - 1 if rng.random() < 0.7 else rng.randint(0, 3)
    rec = planning(
        plan[0][1],
        plan[-1][2],
        q,
        difficulty=rng.choice(DIFFICULTIES),
        metro=metro,
        uid=f"rand-{i}",
    )
    return rec, plan


def _spell(rng: random.Random, name: str) -> str:
    """Spellings the official cleaner treats as equal (or not): case, Station suffix, spaces."""
    r = rng.random()
    if r < 0.5:
        return name
    if r < 0.6:
        return name.lower()
    if r < 0.7:
        return name + " Station"
    if r < 0.8:
        return name.replace(" ", "-")
    if r < 0.9:
        return name.upper()
    return name + " (Line 2)"


def mutate_plan(rng: random.Random, plan: list, metro: dict) -> str:
    """A correct answer, a near miss, or a random mutation of the correct plan (as text)."""
    secs = [list(s) for s in plan]
    stations = sorted({_strip(s) for v in metro.values() for s in v})
    kind = rng.randrange(14)
    if kind == 1:
        i = rng.randrange(len(secs))
        secs[i][rng.choice((1, 2))] = rng.choice(stations + ["Nowhere"])
    elif kind == 2:
        secs[rng.randrange(len(secs))][0] = rng.choice(list(metro) + ["Line 99", "line 1"])
    elif kind == 3:
        secs.append(list(secs[-1]))
    elif kind == 4 and len(secs) > 1:
        secs.pop(rng.randrange(len(secs)))
    elif kind == 5:
        secs = [[s[0], _spell(rng, s[1]), _spell(rng, s[2])] for s in secs]
    elif kind == 6:
        secs.insert(0, [secs[0][0], secs[0][1], secs[0][1]])
    elif kind == 7:
        secs.reverse()
    text = plan_text([tuple(s) for s in secs], sep=rng.choice(["--\n", "\n--\n", " -- \n"]))
    if kind == 8:
        text = text.replace("Route Name:", "route name:", 1)
    elif kind == 9:
        text = text.rstrip("\n")
    elif kind == 10:
        text = "Let me look at the map.\n" + text + "\nHope this helps."
    elif kind == 11:
        text = text.replace("Departure Stop: ", "Departure Stop:", 1)
    elif kind == 12:
        text = text.replace("Arrival Stop: ", "Arrival Stop: \n", 1)
    elif kind == 13:
        text = rng.choice(["", "--", "I don't know.", "Route Name: x\n--\n--"])
    return text


_VQA_TEMPLATES = [
    "\\boxed{{{a}}}",
    "The answer is {a}.",
    "the final answer is {a}\nmore text",
    "Thinking... \\boxed{{wrong}} then \\boxed{{{a}}}",
    "\\boxed{{\\text{{{a}}}}}",
    "{a}",
    "The correct answer is ({a}). Indeed.",
    "\\boxed{{ {a} }}.",
    "\\boxed{{{a}",
    "So $x = {a}$",
]


def random_vqa(rng: random.Random, i: int) -> tuple[Record, str]:
    t = rng.choice(["TorF1", "TorF2", "Counting1", "Counting2", "Counting3"])
    if t.startswith("TorF"):
        truth = rng.randint(0, 1)
        cands = ["yes", "no", "Yes", "NO", "maybe", "yes, no"]
    elif t == "Counting1":
        truth = rng.randint(0, 3)
        cands = ["A", "b", "C", "d", "E", "A)", "(B)"]
    else:
        truth = rng.randint(0, 12)
        cands = [str(truth), str(rng.randint(0, 12)), "+3", "3.0", "٣", "1_0", "-2", "ten", "07"]
    if t.startswith("TorF"):
        right = "yes" if truth else "no"
    else:
        right = "ABCD"[truth] if t == "Counting1" else str(truth)
    rec = vqa(t, truth, difficulty=rng.choice(DIFFICULTIES))
    rec.uid = f"vqa-{i}"
    text = rng.choice(_VQA_TEMPLATES).format(a=right if rng.random() < 0.4 else rng.choice(cands))
    return rec, text
