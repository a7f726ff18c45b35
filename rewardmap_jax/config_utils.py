"""Config helpers for the CLIs: the resolved config saved in (and read back from) the workdir,
user-given paths made absolute at the edge, checks of the sections the run edges own, and the
presets text for `--help`.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections as mlc
import yaml

from rewardmap_jax.data.tokenizer import TINY

CONFIG_JSON = "config.json"
CONFIG_YAML = "config.yaml"
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "curriculum.py"


# Config keys holding user-given filesystem paths ("" = unset). `data.tokenizer` may also be the
# built-in name "tiny"; `reward.fn` may be `path/to/file.py:fn` (its path part is a path).
PATH_KEYS = (
    "model.hf_dir",
    "data.tokenizer",
    "data.reasonmap_dir",
    "data.reasonmap_plus_dir",
    "data.reasonmap_train_dir",
)


class ConfigError(ValueError):
    """A config value that cannot run; the message names the key."""


def absolute_path(path: str | os.PathLike) -> str:
    """`path` made absolute against the current directory (`~` expanded, symlinks kept).

    Every CLI (main, evaluate, export) passes each user-given path through this once, at the
    edge: Orbax refuses relative checkpoint paths, and a run's saved config must still name the
    same directories when `export`/`evaluate` run from another directory. URLs pass unchanged.
    """
    text = os.fspath(path)
    if "://" in text:
        return text
    return os.path.abspath(os.path.expanduser(text))


def absolute_config_paths(config: mlc.ConfigDict) -> None:
    """Makes the path-valued keys of `config` (`PATH_KEYS`, a `reward.fn` file) absolute, in
    place; empty values and the built-in tokenizer name stay as they are."""
    for key in PATH_KEYS:
        section, name = key.split(".")
        if section not in config or name not in config[section]:
            continue  # an older config (e.g. a run's config.json) may not carry the key
        value = config[section][name]
        if isinstance(value, str) and value and not (key == "data.tokenizer" and value == TINY):
            config[section][name] = absolute_path(value)
    fn = str(config.get("reward", {}).get("fn", ""))
    path, sep, name = fn.rpartition(":")
    if sep and path.endswith(".py"):  # a user reward `path/to/file.py:fn`
        config.reward.fn = f"{absolute_path(path)}:{name}"


def missing_paths(config: mlc.ConfigDict) -> list[str]:
    """One message per path-valued key that is set but names no directory (no file, for a
    `reward.fn` file): a typo then stops the run before any compute."""
    errors = []
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = config.get(section, {}).get(name, "")
        if isinstance(value, str) and value and value != TINY and not os.path.isdir(value):
            errors.append(f"config.{key}: no directory {value!r}")
    path, sep, _ = str(config.get("reward", {}).get("fn", "")).rpartition(":")
    if sep and path.endswith(".py") and not os.path.isfile(path):
        errors.append(f"config.reward.fn: no file {path!r}")
    return errors


def config_to_dict(config: mlc.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    """A plain nested dict (field references resolved, tuples as lists) for JSON/YAML."""
    d = config.to_dict() if isinstance(config, mlc.ConfigDict) else dict(config)
    return json.loads(json.dumps(d, default=_jsonable))


def _jsonable(x: Any) -> Any:
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    return str(x)


def save_config(config: mlc.ConfigDict, workdir: str | Path) -> tuple[Path, Path]:
    """Writes `<workdir>/config.json` and `config.yaml` (the resolved config, overrides applied)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    d = config_to_dict(config)
    json_path = workdir / CONFIG_JSON
    yaml_path = workdir / CONFIG_YAML
    json_path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
    yaml_path.write_text(yaml.safe_dump(d, sort_keys=True))
    return json_path, yaml_path


def load_config(workdir: str | Path) -> mlc.ConfigDict:
    """The config a run in `workdir` was started with (from its `config.json`), locked."""
    path = Path(workdir) / CONFIG_JSON
    if not path.exists():
        raise FileNotFoundError(
            f"no {CONFIG_JSON} in {workdir}; is it a run directory written by rewardmap_jax.main?"
        )
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    config = mlc.ConfigDict(d)
    config.lock()
    return config


def _positive(config: mlc.ConfigDict, key: str, minimum: int) -> str | None:
    section, name = key.split(".")
    if section not in config or name not in config[section]:
        return None  # an older config (e.g. a run's config.json) may not carry the key
    value = config[section][name]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        return f"config.{key} must be an integer >= {minimum}, got {value!r}"
    return None


_BOUNDS = {
    "checkpoint.every_steps": 0,
    "checkpoint.keep": 1,
    "log.every_steps": 1,
    "log.gallery_every_steps": 0,
    "log.gallery_questions": 1,
    "eval.every_steps": 0,
    "eval.questions_per_task": 0,
    "eval.periodic_questions_per_task": 0,
    "eval.batch_size": 1,
    "eval.max_new_tokens": 1,
}
# Keys that configs used to have, with why they went (a saved run config carrying one is
# refused with this hint instead of being silently ignored).
REMOVED_KEYS = {
    "eval.temperature": "evaluation always decodes greedily; the key was never read",
    "eval.max_questions": "use eval.questions_per_task / eval.periodic_questions_per_task",
    "rl.prompt_buckets": "prompts are bucketed by data.prompt_buckets; the key was never read",
}


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": leaf} of a nested dict (lists and tuples are leaves)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unknown_key_errors(d: Mapping[str, Any], reference: mlc.ConfigDict) -> list[str]:
    """Keys of the nested dict `d` that `reference` does not have, each with a hint."""
    known = flatten(reference.to_dict())
    prefixes = {k.rsplit(".", i)[0] for k in known for i in range(1, k.count(".") + 1)}
    errors = []
    for key in flatten(d):
        if key in known or key in prefixes:
            continue
        hint = REMOVED_KEYS.get(key, "the config has no such key")
        errors.append(f"unknown config key {key!r} ({hint})")
    return errors


def validate_config(config: mlc.ConfigDict) -> None:
    """Checks the run-edge sections (checkpoint, log, eval) and that the config has no key the
    code does not read (compared with the default config of its preset: a key removed from
    the code, e.g. `eval.temperature`, is refused with the reason); raises ConfigError naming
    each key."""
    errors = [e for key, lo in _BOUNDS.items() if (e := _positive(config, key, lo))]
    if "preset" in config and not isinstance(config.preset, str):
        errors.append(f"config.preset must be a string, got {config.preset!r}")
    elif config.get("preset") in _read_config_file(DEFAULT_CONFIG)[1]:
        errors += unknown_key_errors(config.to_dict(), get_config(preset=config.preset))
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def get_config(config_file: str | Path = DEFAULT_CONFIG, preset: str | None = None):
    """`get_config(preset)` of a config file (as `--config FILE:PRESET` would load it)."""
    import importlib.util

    path = Path(config_file)
    spec = importlib.util.spec_from_file_location(f"_rewardmap_config_{path.stem}", path)
    if spec is None or spec.loader is None or not path.exists():
        raise FileNotFoundError(f"no config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def _read_config_file(path: Path) -> tuple[str, list[str]]:
    """(docstring, PRESETS) of a config file, read without importing it."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return "", []
    presets: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "PRESETS" for t in node.targets
        ):
            presets = [str(p) for p in ast.literal_eval(node.value)]
    return ast.get_docstring(tree) or "", presets


def presets_help(config_file: str | Path = DEFAULT_CONFIG) -> str:
    """One paragraph for `--config`'s help: the presets of `config_file`."""
    path = Path(config_file)
    _, presets = _read_config_file(path)
    text = f"Config file, optionally with a preset: {path.name}[:PRESET]."
    if presets:
        text += f" Presets: {', '.join(presets)} (default {presets[0]})."
    return text + " Override any key with --config.SECTION.KEY=VALUE."


def config_doc(config_file: str | Path = DEFAULT_CONFIG) -> str:
    """The config file's docstring (its presets and run commands), for `--help`."""
    path = Path(config_file)
    doc, _ = _read_config_file(path)
    return f"Config ({path}):\n\n{doc}\n" if doc else ""
