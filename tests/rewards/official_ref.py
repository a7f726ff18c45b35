"""A straightforward per-completion transcription of the official RewardMap reward rules.

Written from the RewardMap paper (arXiv 2510.02240, docs/rewards.md) and the official reason_map.py
logic (github.com/fscdc/RewardMap), string by string, with plain Python loops and no code shared
with `rewardmap_jax.rewards`: the jitted reward must agree with it. It works on the official inputs
(metro dict with annotations stripped, station names, transfer count, difficulty), not on the
package's arrays.
"""

from __future__ import annotations

import re


def ref_clean(s: str) -> str:
    s = (
        s.replace("Metro", "")
        .replace("metro", "")
        .replace(",", "")
        .replace("*", "")
        .replace("\n", "")
        .replace("'", "")
        .replace("Univ.", "University")
        .replace("Univ", "University")
        .replace("Tech.", "Technology")
        .replace("Tech", "Technology")
        .replace("road", "lu")
        .replace("Road", "lu")
    )
    s = s.replace("Station", "").replace("station", "").replace("Asian Games Village", "yayuncun")
    if s.endswith("站"):
        s = s[:-1]
    s = re.sub(r"[\(\（][^\)\）]*[\)\）]", "", s)
    return re.sub(r"[\s\-]+", "", s).lower()


def ref_metro(metro: dict) -> dict:
    out = {}
    for name, stations in metro.items():
        out[name] = [
            s.replace(" (Transfer Station)", "")
            .replace(" (Branch-starting Station)", "")
            .replace("（换乘站）", "")
            .replace("（支线起始站）", "")
            for s in stations
        ]
    return out


def _sections(answer: str, case_sensitive: bool) -> list[dict]:
    data = []
    for section in answer.split("--"):
        if not section.strip():
            continue
        probe = section if case_sensitive else section.lower()
        keys = ["Route Name:", "Departure Stop:", "Arrival Stop:"]
        if not case_sensitive:
            keys = [k.lower() for k in keys]
        if any(k not in probe for k in keys):
            continue
        rn = re.search(r"Route Name: (.*?)\n", section)
        dp = re.search(r"Departure Stop: (.*?)\n", section)
        data.append(
            {
                "route": rn.group(1).strip() if rn else "Wrong",
                "dep": ref_clean(dp.group(1)) if dp else "Wrong",
                "arr": ref_clean(section.split("Arrival Stop:")[-1].strip()),
            }
        )
    return data


def _alias(name: str) -> str:
    if "八通" in name:
        name = "Line 1"
    if "大兴" in name:
        name = "Line 4"
    return name


def ref_acc_planning(answer, metro, s1, s2) -> bool:
    data = _sections(answer, case_sensitive=True)
    if not data:
        return False
    first_ok = ref_clean(data[0]["dep"]) == ref_clean(s1)
    if not (first_ok and ref_clean(data[-1]["arr"]) == ref_clean(s2)):
        return False
    ok = True
    for i, sec in enumerate(data):
        name = _alias(sec["route"])
        if name in metro:
            stations = [ref_clean(x) for x in metro[name]]
            if ref_clean(sec["dep"]) in stations and ref_clean(sec["arr"]) in stations:
                if i < len(data) - 1 and ref_clean(sec["arr"]) != ref_clean(data[i + 1]["dep"]):
                    ok = False
            else:
                ok = False
        else:
            ok = False
    return ok


def ref_detail_planning(answer, metro, s1, s2, q) -> float:
    data = _sections(answer, case_sensitive=False)
    score = 0.0
    ends = bool(data) and ref_clean(data[0]["dep"]) == ref_clean(s1)
    if ends and ref_clean(data[-1]["arr"]) == ref_clean(s2):
        score += 2
        for i, sec in enumerate(data):
            if (i + 1) > q:
                score -= 5
            name = _alias(sec["route"])
            if name not in metro:
                continue
            if q == 0:
                for line, stations in metro.items():
                    cleaned = [ref_clean(x) for x in stations]
                    if ref_clean(s1) in cleaned and ref_clean(s2) in cleaned and line == name:
                        score += 4
                        break
            else:
                score += 3
            stations = [ref_clean(x) for x in metro[name]]
            if ref_clean(sec["dep"]) in stations and ref_clean(sec["arr"]) in stations:
                if i < len(data) - 1 and ref_clean(sec["arr"]) == ref_clean(data[i + 1]["dep"]):
                    if not (i + 1) > q:
                        score += 1
    return min(score, 10.0)


def _find_math_answer(s: str) -> str:
    s = s.lower()
    if "{}" in s:
        s = s.replace("{}", "")
    try:
        ans = re.compile("oxed{(.*)}", flags=re.S).findall(s)[-1]
    except IndexError:
        ans = s
    if ans.find("}") != -1 and (ans.find("{") == -1 or ans.find("}") < ans.find("{")):
        ans = ans.split("}")[0]
    ans = ans.split("=")[-1]
    ans = ans.split("\\approx")[-1]
    for a, b in [
        (" ", ""), ("\\,", ""), ("∞", "\\infty"), ("+\\infty", "\\infty"), ("\\\\", "\\"),
        ("\n", ""), ("\\text", ""), ("\\mbox", ""), ("bmatrix", "pmatrix"), ("\\left", ""),
        ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("{m}^3", ""), ("m^3", ""),
        ("{units}", ""), ("units", ""), ("{km}", ""), ("km", ""),
    ]:  # fmt: skip
        ans = ans.replace(a, b)
    st = ans
    for a, b in [
        ("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
        ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""), ("$", ""),
    ]:  # fmt: skip
        st = st.replace(a, b)
    st = st.split("\\text{ ")[0]
    st = st.replace("\\%", "").replace("\\%", "")
    st = st.replace(" .", " 0.").replace("{.", "{0.")
    if len(st) == 0:
        return st
    if st[0] == ".":
        st = "0" + st
    if len(st.split("=")) == 2:
        st = st.split("=")[-1]
    if len(st.split("\\approx")) == 2:
        st = st.split("\\approx")[-1]
    st = st.replace(" ", "")
    if st == "0.5":
        st = "\\frac{1}{2}"
    if len(st.split("/")) == 2:
        a, b = st.split("/")
        try:
            if st == f"{int(a)}/{int(b)}":
                st = "\\frac{" + str(int(a)) + "}{" + str(int(b)) + "}"
        except ValueError:
            pass
    return st


def ref_vqa_answer(response: str) -> str:
    ans = response
    if "oxed{" not in ans:
        flags = ["the final answer is", "the answer is", "the correct answer is"]
        for flag in flags + ["the answer should be"]:
            raw = ans
            ans = ans.split(flag)[-1].strip()
            if flag in raw:
                ans = ans.split("\n")[0].split(". ")[0]
            flag = flag.replace("the", "The")
            raw = ans
            ans = ans.split(flag)[-1].strip()
            if flag in raw:
                ans = ans.split("\n")[0].split(". ")[0]
    elif ans.count("oxed{") > 1:
        ans = "\\boxed{" + ans.split("oxed{")[-1]
    return _find_math_answer(ans).rstrip(".").lstrip(":").strip()


def ref_acc_vqa(task_type: str, answer: str, truth: int) -> bool:
    if "TorF" in task_type:
        return answer.lower() == ("yes" if truth == 1 else "no")
    if task_type in ("Counting2", "Counting3"):
        try:
            return int(answer) == truth
        except (ValueError, TypeError):
            return False
    return {"a": 0, "b": 1, "c": 2, "d": 3}.get(answer.lower(), -1) == truth


def ref_weight(task_type: str, q: int, difficulty: str) -> float:
    w = {"easy": 1.0, "middle": 1.2, "hard": 1.5}[difficulty]
    if task_type == "planning" and q > 0:
        w += 0.5
    return w


def ref_reward(record, response: str) -> float:
    """The official `reason_map_compute_score` in mode difficulty_aware (Counting1 detail off)."""
    metro = ref_metro(record.metro)
    if record.type == "planning":
        acc = ref_acc_planning(response, metro, record.station_1, record.station_2)
    else:
        acc = ref_acc_vqa(record.type, ref_vqa_answer(response), record.answer)
    score = 10.0 if acc else 0.0
    if record.type == "planning":
        score += 0.5 * ref_detail_planning(
            response, metro, record.station_1, record.station_2, record.question_transfer_count
        )
    return score * ref_weight(record.type, record.question_transfer_count, record.difficulty_city)


def ref_extract_stops(s: str) -> list[str]:
    """`extract_stops_no_quotes`: the bracketed list after "Stops:", split on top-level commas."""
    m = re.search(r"Stops\s*:\s*\[", s, flags=re.IGNORECASE)
    if not m:
        return []
    start = s.find("[", m.start())
    depth, end = 0, None
    for i, ch in enumerate(s[start:], start):
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
    for ch in s[start + 1 : end].strip():
        if ch == "(":
            paren += 1
            buf.append(ch)
        elif ch == ")":
            paren = max(paren - 1, 0)
            buf.append(ch)
        elif ch == "," and paren == 0:
            if "".join(buf).strip():
                tokens.append("".join(buf).strip())
            buf = []
        else:
            buf.append(ch)
    if "".join(buf).strip():
        tokens.append("".join(buf).strip())
    out = []
    for t in tokens:
        t = re.sub(r"^(and\s+)", "", t.strip().strip(".").strip(";"), flags=re.IGNORECASE).strip()
        if t in {"...", "…"} or not t:
            continue
        out.append(t)
    return out


def ref_detail_counting1(stops: list[str], metro: dict, s1: str, s2: str) -> float | None:
    """`get_detailed_reward_counting1`; None where the official code raises (no common line)."""
    a, b = ref_clean(s1), ref_clean(s2)
    line = None
    for stations in metro.values():
        names = [ref_clean(x) for x in stations]
        if a in names and b in names:
            line = names
            break
    if line is None:
        return None
    i1, i2 = line.index(a), line.index(b)
    lo, hi = min(i1, i2), max(i1, i2)
    truth = set(line[lo + 1 : hi])
    reward, seen = 0.0, set()
    for pred in stops:
        p = ref_clean(pred)
        if p in truth and p not in seen:
            reward += 0.5
            seen.add(p)
        else:
            reward -= 0.5
    return reward


def ref_clean_rm(s: str) -> str:
    """ReasonMap `tools.clean_string` (the metric's cleaner)."""
    s = s.replace("Metro", "").replace("metro", "").replace(",", "").replace("*", "")
    s = s.replace("\n", "")
    s = re.sub(r"[\(\（][^\)\）]*[\)\）]", "", s)
    return re.sub(r"[\s\-]+", "", s).lower()


def ref_metric_acc_short(answer: str, metro: dict, s1: str, s2: str) -> bool:
    """ReasonMap short-question accuracy (main.py): case-sensitive keys, ReasonMap cleaner."""
    data = []
    for sec in answer.split("--"):
        if not sec.strip():
            continue
        if "Route Name:" not in sec or "Departure Stop:" not in sec or "Arrival Stop:" not in sec:
            continue
        rn = re.search(r"Route Name: (.*?)\n", sec)
        dp = re.search(r"Departure Stop: (.*?)\n", sec)
        data.append(
            {
                "route": rn.group(1).strip() if rn else "Wrong",
                "dep": ref_clean_rm(dp.group(1)) if dp else "Wrong",
                "arr": ref_clean_rm(sec.split("Arrival Stop:")[-1].strip()),
            }
        )
    if not data:
        return False
    c = ref_clean_rm
    if c(data[0]["dep"]) != c(s1) or c(data[-1]["arr"]) != c(s2):
        return False
    for i, sec in enumerate(data):
        name = _alias(sec["route"])
        if name not in metro:
            return False
        stations = [c(x) for x in metro[name]]
        if c(sec["dep"]) not in stations or c(sec["arr"]) not in stations:
            return False
        if i < len(data) - 1 and c(sec["arr"]) != c(data[i + 1]["dep"]):
            return False
    return True
