"""The question record shared by every data source (map world, ReasonMap, ReasonMap-Plus, -Train).

Field names and meanings follow the real datasets (Hugging Face `FSCCS/ReasonMap`,
`FSCCS/ReasonMap-Plus`, `FSCCS/ReasonMap-Train`; docs/data.md), so rewards, metrics and the data
pipeline consume map-world questions and real ones through the same code. A record is plain
data: no model, no JAX.

Conventions
-----------
* `type` is one of `TASK_TYPES`. `planning` is a ReasonMap route question; the five others are the
  ReasonMap-Plus VQA types.
* `answer` is the ground truth for the VQA types, as an int exactly as the real data stores it:
  TorF1/TorF2 1 = yes, 0 = no; Counting1 the index 0..3 of the right option (A..D); Counting2 and
  Counting3 the count. Planning questions have `answer=None`: their ground truth is `routes` plus
  the accuracy rule over `metro`.
* `metro` is the metro dict of the city (line name -> ordered station names), with the real
  annotations (" (Transfer Station)", ...) kept as the real data has them; consumers clean names.
  It is serialised under the real key `json`.
* `routes` holds every reference plan: plan key -> list of sections (dicts with `route_name`,
  `departure_stop`, `arrival_stop`, `via_stops`, `num_via_stops`).
* `template` says which answer format a planning question asks for: `short`, `long_num_via`
  ("Number of Via Stops") or `long_via` ("Via Stops"); `vqa` for the other types.
* `figure` is where the map image comes from: PNG/JPEG bytes, a path, or a PIL image (map world).
"""

from __future__ import annotations

import dataclasses
from typing import Any

TASK_TYPES: tuple[str, ...] = ("TorF1", "TorF2", "Counting1", "Counting2", "Counting3", "planning")
PLUS_TYPES: tuple[str, ...] = TASK_TYPES[:-1]
DIFFICULTIES: tuple[str, ...] = ("easy", "middle", "hard")
QUESTION_DIFFICULTIES: tuple[str, ...] = ("easy", "medium", "hard")
TEMPLATES: tuple[str, ...] = ("vqa", "short", "long_num_via", "long_via")
SECTION_FIELDS: tuple[str, ...] = (
    "route_name",
    "departure_stop",
    "arrival_stop",
    "via_stops",
    "num_via_stops",
)


@dataclasses.dataclass
class Record:
    """One question about one map (see the module docstring for the conventions)."""

    uid: str
    type: str
    question: str
    answer: int | None
    figure: Any
    metro: dict[str, list[str]]
    routes: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    station_1: str | None = None
    station_2: str | None = None
    difficulty_city: str = "easy"
    difficulty_question: str = "easy"
    question_transfer_count: int = 0
    city_line_count: int = 0
    city_transfer_count: int = 0
    country: str = ""
    city: str = ""
    template: str = "vqa"
    source: str = "mapworld"

    def __post_init__(self) -> None:
        if self.type not in TASK_TYPES:
            raise ValueError(
                f"record {self.uid}: unknown type {self.type!r}; expected {TASK_TYPES}"
            )
        if self.template not in TEMPLATES:
            raise ValueError(f"record {self.uid}: unknown template {self.template!r}")
        if self.difficulty_city not in DIFFICULTIES:
            raise ValueError(
                f"record {self.uid}: difficulty_city {self.difficulty_city!r} not in {DIFFICULTIES}"
            )

    def to_row(self, figure: Any | None = None) -> dict[str, Any]:
        """The record as a row with the real datasets' column names (`json` for the metro dict)."""
        row = dataclasses.asdict(self)
        row["json"] = row.pop("metro")
        row["figure"] = self.figure if figure is None else figure
        return row
