"""Deterministic construction of the built-in tiny tokenizer (`scripts/build_tiny_tokenizer.py`).

A byte-level BPE with Qwen2's normalizer (NFC), pre-tokenizer (Qwen2's split regex, then ByteLevel
without its own regex) and ByteLevel decoder, trained to exactly `NUM_REGULAR` regular entries on a
seeded corpus of map-world question/answer text, followed by the Qwen2-VL special tokens at the ids
of the shared contract (/work/helpers/tokens.md): <|endoftext|> = 1024 ... <|video_pad|> = 1037.
The directory it writes loads with `transformers.AutoTokenizer.from_pretrained(dir)` offline.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from rewardmap_jax.data.chat_template import QWEN2_VL_CHAT_TEMPLATE

NUM_REGULAR = 1024
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen2's pre-tokenizer split (transformers `models/qwen2/tokenization_qwen2.py`): single digits,
# letters with one leading non-letter, punctuation runs, newlines.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
MODEL_MAX_LENGTH = 32768
CORPUS_SEED = 20251002
CORPUS_QUESTIONS = 6000

_COLOURS = ("Red", "Blue", "Green", "Orange", "Purple", "Cyan", "Yellow", "Pink", "Brown", "Grey")
_LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_WORDS = (
    "Central", "Park", "Harbour", "Market", "Bridge", "Airport", "University", "Museum", "Square",
    "North", "South", "East", "West", "Garden", "Tower", "Station", "Terminal", "Riverside",
    "Old Town", "Stadium", "Hospital", "Library", "Lake", "Hill", "Gate", "Plaza", "Port",
)
# Syllables for seeded made-up place names, so the BPE also learns generic sub-word pieces.
_SYLLABLES = (
    "ka", "lo", "ren", "mar", "ton", "ber", "vil", "san", "do", "ri", "na", "shi", "gu", "an",
    "chen", "hu", "li", "ma", "po", "ster", "ford", "ham", "ley", "wick", "dale", "mont", "ville",
    "bur", "ca", "del", "ei", "fa", "go", "ja", "ke", "mi", "nu", "or", "pe", "qu", "ro", "su",
    "ta", "um", "ve", "wa", "xi", "ya", "zo", "ing", "ang", "ong", "en", "er", "al", "is",
)


def _place(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _station(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.3:
        return rng.choice(_LETTERS)
    if kind < 0.5:
        return f"Station {rng.choice(_LETTERS)}"
    if kind < 0.7:
        return " ".join(rng.sample(_WORDS, rng.randint(1, 2)))
    return f"{_place(rng)} {rng.choice(_WORDS)}" if rng.random() < 0.5 else _place(rng)


def _line(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return f"{rng.choice(_COLOURS)} Line"
    return f"Line {rng.randint(1, 12)}"


def _route_answer(rng: random.Random, template: str) -> str:
    sections = []
    for _ in range(rng.randint(1, 3)):
        lines = [
            f"Route Name: {_line(rng)}",
            f"Departure Stop: {_station(rng)}",
            f"Arrival Stop: {_station(rng)}",
        ]
        if template == "long_num_via":
            lines.append(f"Number of Via Stops: {rng.randint(0, 14)}")
        elif template == "long_via":
            vias = [_station(rng) for _ in range(rng.randint(0, 4))]
            lines.append(f"Via Stops: {', '.join(vias)}")
        sections.append("\n".join(lines))
    return "\n--\n".join(sections)


_TORF = 'Please answer yes or no and put your final answer (yes or no) in one "\\boxed{}". '
_COUNT = 'Please put your final answer (a number) in one "\\boxed{}". '
_MCQ = (
    'Please solve the multiple choice problem and put your answer (one of ABCD) in one '
    '"\\boxed{}". '
)
_PLAN_FIELDS = {
    "short": "Route Name: <line name>\nDeparture Stop: <station>\nArrival Stop: <station>",
    "long_num_via": "Number of Via Stops: <number of stops passed between departure and arrival>",
    "long_via": "Via Stops: <the stops passed between departure and arrival, separated by commas>",
}


def _qa_pair(rng: random.Random) -> str:
    """One question + answer in the map world's phrasing (mapworld/questions.py)."""
    a, b, line = _station(rng), _station(rng), _line(rng)
    kind = rng.randrange(6)
    if kind == 0:
        q = (
            f"{_TORF}According to the subway map, is it true that {a} Station is on the same "
            f"line as {b} Station?"
        )
        ans = rf"\boxed{{{rng.choice(('yes', 'no'))}}}"
    elif kind == 1:
        q = f"{_TORF}According to the subway map, is it true that {a} Station is on the {line}?"
        ans = rf"\boxed{{{rng.choice(('yes', 'no'))}}}"
    elif kind == 2:
        opts = " ".join(f"{k}) {rng.randint(0, 30)}" for k in "ABCD")
        q = (
            f"{_MCQ}According to the subway map, how many intermediate stops are there between "
            f"{a} Station and {b} Station (except for this two stops)? {opts}"
        )
        ans = rf"\boxed{{{rng.choice('ABCD')}}}"
    elif kind == 3:
        q = f"{_COUNT}According to the subway map, how many lines pass through {a} Station?"
        ans = rf"\boxed{{{rng.randint(0, 12)}}}"
    elif kind == 4:
        q = f"{_COUNT}According to the subway map, how many lines are there in the map?"
        ans = rf"\boxed{{{rng.randint(1, 12)}}}"
    else:
        template = rng.choice(("short", "long_num_via", "long_via"))
        fields = _PLAN_FIELDS["short"]
        if template != "short":
            fields += "\n" + _PLAN_FIELDS[template]
        q = (
            f"According to the subway map, how do I get from {a} to {b}? Give the route as one "
            'block per line you ride, with blocks separated by "--". Write each block exactly '
            f"as:\n{fields}"
        )
        ans = _route_answer(rng, template)
    prefix = rng.choice(("The answer is ", "So the final answer is ", "", "Answer: "))
    # Role names as the chat template writes them, so the scaffolding costs one token per role.
    return f"system\nuser\n{q}\nassistant\n{prefix}{ans}\n"


def corpus(seed: int = CORPUS_SEED, n: int = CORPUS_QUESTIONS) -> list[str]:
    """The training corpus: `n` seeded map-world question/answer texts (every task type/format)."""
    rng = random.Random(seed)
    texts = [_qa_pair(rng) for _ in range(n)]
    texts.append(" ".join(str(i) for i in range(200)))
    texts.append("You are a helpful assistant.")
    return texts


def build_tokenizer_object(seed: int = CORPUS_SEED):  # -> tokenizers.Tokenizer
    """Trains the byte-level BPE and appends the special tokens (a `tokenizers.Tokenizer`)."""
    # Training is parallel in Rust; one thread keeps merge tie-breaking reproducible.
    os.environ.setdefault("RAYON_RS_NUM_THREADS", "1")
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=NUM_REGULAR,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(seed), trainer=trainer)
    if tok.get_vocab_size() != NUM_REGULAR:
        raise RuntimeError(
            f"BPE training produced {tok.get_vocab_size()} entries, expected {NUM_REGULAR}; "
            "enlarge the corpus"
        )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def tokenizer_config() -> dict:
    """`tokenizer_config.json` contents: Qwen2's tokenizer class and the contract's bos/eos/pad."""
    return {
        "add_prefix_space": False,
        "backend": "tokenizers",
        "bos_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "extra_special_tokens": list(SPECIAL_TOKENS[1:]),
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def build_tiny_tokenizer(out_dir: str | os.PathLike, seed: int = CORPUS_SEED) -> Path:
    """Writes the tiny tokenizer as a Hugging Face tokenizer directory; returns its path.

    The files are written directly (not through `save_pretrained`) so their bytes depend only on
    this code and the `tokenizers` serialisation, not on the installed transformers version.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer_object(seed)
    (out / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    config = json.dumps(tokenizer_config(), indent=2, sort_keys=True, ensure_ascii=False)
    (out / "tokenizer_config.json").write_text(config + "\n", encoding="utf-8")
    (out / "chat_template.jinja").write_text(QWEN2_VL_CHAT_TEMPLATE, encoding="utf-8")
    return out


# Qwen2.5-VL's layout: 151,643 regular BPE entries, then the special tokens from
# <|endoftext|> = 151643 to <|video_pad|> = 151656 (the hub's tokenizer.json; the model's
# embedding table has 151,936 rows for 3B and 152,064 for 7B).
QWEN_NUM_REGULAR = 151643


def build_qwen_id_tokenizer(out_dir: str | os.PathLike, num_regular: int = QWEN_NUM_REGULAR,
                            seed: int = CORPUS_SEED) -> Path:
    """The tiny tokenizer re-laid out at Qwen2.5-VL's ids, for random checkpoints at the real
    vocabulary size (scripts/rehearsal.py): the tiny BPE's 1,024 entries keep ids 0-1023
    (text encodes exactly as with the tiny tokenizer), unreachable filler entries
    (`<filler_ID>`, no merge produces them; they decode to that text) take ids 1024 to
    `num_regular` - 1, and the Qwen2-VL special tokens follow at `num_regular`... as on the hub
    (<|im_end|> = 151645, <|image_pad|> = 151655 for the default). Written like
    `build_tiny_tokenizer` (same config and chat template)."""
    from tokenizers import Tokenizer

    if num_regular < NUM_REGULAR:
        raise ValueError(f"num_regular {num_regular} < the tiny BPE's {NUM_REGULAR} entries")
    out = build_tiny_tokenizer(out_dir, seed)
    spec = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    vocab.update({f"<filler_{i}>": i for i in range(NUM_REGULAR, num_regular)})
    for i, added in enumerate(spec["added_tokens"]):
        added["id"] = num_regular + i
    tok = Tokenizer.from_str(json.dumps(spec))  # validates the edited file
    (out / "tokenizer.json").write_text(tok.to_str(pretty=False) + "\n", encoding="utf-8")
    return out
