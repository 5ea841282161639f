"""The user's task files: JSONL rows, their field names, their checkers, their sidecars.

A task file is one JSONL file (a folder holds one per case). Each row is an object with

- ``prompt`` (required, non-empty text), ``answer`` (the reference: text, a number for the numeric
  and maths checkers, a letter or index for ``choice_letter``, any JSON value for a user function),
  ``choices`` (multiple choice), ``id`` (default: the line number; a string or an integer, unique),
  ``checker`` (this row's checker, overriding the file's);
- other field names where ``--field-map prompt=input,answer=target,id=index`` (or the sidecar's
  ``[fields]`` table) says so.

A sidecar ``<stem>.task.toml`` (or ``<file>.jsonl.task.toml``) beside the file may hold::

    checker = "numeric"              # the file's checker (evals/checkers.py); default: --custom-metric,
                                     # else multiple_choice when the first row has choices, else exact_match
    normalize = ["strip", "lower"]   # exact_match / contains / regex normalisations (default: --match-normalize)
    [fields]                         # this file's field names (over --field-map)
    prompt = "question"

Unknown sidecar keys, unknown checkers, bad patterns and field maps are errors naming the file; a
malformed row is an error naming ``file:line``. :func:`task_file` reads only what the collection
checks need (the sidecar, and the ``checker`` fields of the rows that have one), cached by the
file's size and modification time.
"""
from __future__ import annotations

import functools
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarkdata.loader import DataError, iter_json_lines, iter_lines
from evals.answer_checking import NORMALIZATIONS
from evals.checkers import MIXED_METRICS, CheckerError, CheckerSpec, parse_checker, target_text

FIELDS = ("id", "prompt", "answer", "choices", "checker")
SIDECAR_KEYS = ("checker", "normalize", "fields")
MIXED = "custom_mixed"


class TaskFileError(DataError):
    """A task file, its sidecar or its field map cannot be read as asked."""


def parse_field_map(text: str) -> tuple[tuple[str, str], ...]:
    """``"prompt=input,answer=target"`` -> (("prompt", "input"), ("answer", "target"))."""
    pairs = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        ours, sep, theirs = (s.strip() for s in part.partition("="))
        if not sep or not theirs:
            raise ValueError(f"expected FIELD=NAME pairs separated by commas, found {part!r}")
        pairs.append((ours, theirs))
    return check_fields(dict(pairs), "--field-map")


def check_fields(fields: Mapping[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field {', '.join(unknown)}; the fields are {', '.join(FIELDS)}")
    bad = {k: v for k, v in fields.items() if not isinstance(v, str) or not v}
    if bad:
        raise ValueError(f"{where}: a field's name in the file must be a non-empty string, found {bad}")
    if len(set(fields.values())) != len(fields):
        raise ValueError(f"{where}: two fields read the same name ({dict(fields)})")
    return tuple(sorted(fields.items()))


def data_files(path: Path) -> dict[str, Path]:
    """{case name: file}: the file itself, or every ``*.jsonl`` in the folder (sorted)."""
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise DataError(f"--data-file {path}: the folder holds no *.jsonl files")
        return {f.stem: f for f in files}
    return {path.stem: path}


def sidecar_of(path: Path) -> Path | None:
    found = [p for p in (path.with_suffix(".task.toml"), path.with_name(path.name + ".task.toml")) if p.is_file()]
    if len(found) > 1:
        raise TaskFileError(f"{path}: two sidecars, {found[0].name} and {found[1].name}; keep one")
    return found[0] if found else None


@dataclass(frozen=True)
class TaskFile:
    """One task file as collection sees it: its checkers (the file's default and every one its
    rows name), field names and normalisations."""

    case: str
    path: Path
    sidecar: Path | None
    default: CheckerSpec
    checkers: tuple[CheckerSpec, ...]  # every checker a row uses, in order of first use
    fields: tuple[tuple[str, str], ...]  # (our name, the file's) for every field
    normalize: tuple[str, ...] | None  # the sidecar's, else None: the run's --match-normalize

    def field(self, name: str) -> str:
        return dict(self.fields)[name]

    @property
    def mixed(self) -> bool:
        return len(self.checkers) > 1

    @property
    def benchmark(self) -> str:
        return MIXED if self.mixed else self.checkers[0].benchmark

    def metrics(self) -> dict[str, tuple[str, str]]:
        return dict(MIXED_METRICS) if self.mixed else self.checkers[0].metrics()

    def describe(self) -> dict[str, Any]:
        renamed = {ours: theirs for ours, theirs in self.fields if ours != theirs}
        return {"file": str(self.path), "sidecar": str(self.sidecar) if self.sidecar else None,
                "checker": self.default.text, "row_checkers": [c.text for c in self.checkers if c != self.default],
                **({"fields": renamed} if renamed else {}),
                **({"normalize": list(self.normalize)} if self.normalize is not None else {})}


def _sidecar(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise TaskFileError(f"{path}: cannot read the sidecar ({error})") from None
    unknown = sorted(set(data) - set(SIDECAR_KEYS))
    if unknown:
        raise TaskFileError(f"{path}: unknown key {', '.join(unknown)}; a sidecar holds {', '.join(SIDECAR_KEYS)}")
    normalize = data.get("normalize")
    if normalize is not None and not (isinstance(normalize, list)
                                      and all(isinstance(s, str) and s in NORMALIZATIONS for s in normalize)):
        raise TaskFileError(f"{path}: normalize must be a list of {', '.join(NORMALIZATIONS)}, found {normalize!r}")
    if "fields" in data and not isinstance(data["fields"], dict):
        raise TaskFileError(f"{path}: [fields] must be a table of FIELD = \"name\", found {data['fields']!r}")
    return data


def task_file(case: str, path: Path, custom_metric: str | None = None,
              field_map: Sequence[tuple[str, str]] = ()) -> TaskFile:
    """The file's :class:`TaskFile` (cached until the file or its sidecar changes)."""
    sidecar = sidecar_of(path)
    stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in (path, sidecar) if p is not None)
    return _task_file(case, path, sidecar, stamp, custom_metric, tuple(field_map))


@functools.lru_cache(maxsize=256)
def _task_file(case: str, path: Path, sidecar: Path | None, stamp: tuple, custom_metric: str | None,
               field_map: tuple[tuple[str, str], ...]) -> TaskFile:
    data = _sidecar(sidecar) if sidecar is not None else {}
    fields = {name: name for name in FIELDS} | dict(field_map)
    try:
        fields |= dict(check_fields(data.get("fields", {}), f"{sidecar} [fields]"))
        spec_text = data.get("checker", custom_metric)
        default = parse_checker(spec_text) if spec_text is not None else None
    except (ValueError, CheckerError) as error:
        raise TaskFileError(f"{sidecar or path}: {error}") from None
    key = json.dumps(fields["checker"])
    used: dict[CheckerSpec, None] = {}
    first_has_choices, plain_rows = None, 0
    for number, line in iter_lines(path):
        row = _quiet_json(line) if first_has_choices is None or key in line else None
        if first_has_choices is None:
            first_has_choices = isinstance(row, dict) and fields["choices"] in row
        if isinstance(row, dict) and fields["checker"] in row:
            try:
                used.setdefault(parse_checker(row[fields["checker"]]), None)
            except CheckerError as error:
                raise TaskFileError(f"{path}:{number}: {error}") from None
        else:
            plain_rows += 1
    if default is None:
        default = parse_checker("multiple_choice" if first_has_choices else "exact_match")
    checkers = tuple(dict.fromkeys(([default] if plain_rows else []) + list(used))) or (default,)
    if len(checkers) > 1:
        lone = [c.text for c in checkers if not c.single_score]
        if lone:
            raise TaskFileError(f"{path}: its rows name several checkers ({', '.join(c.text for c in checkers)}), "
                                f"but {', '.join(lone)} cannot share a file: give those rows a file of their own")
    return TaskFile(case, path, sidecar, default, checkers, tuple(sorted(fields.items())),
                    tuple(data["normalize"]) if "normalize" in data else None)


def _quiet_json(line: str) -> Any:
    try:
        return json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None  # load() names the line


def _check_row(task: TaskFile, row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, found {type(row).__name__}")

    def name(field: str) -> str:
        theirs = task.field(field)
        return f"'{field}'" if theirs == field else f"'{field}' (the file's {theirs!r})"

    prompt, answer, choices = (row.get(task.field(f)) for f in ("prompt", "answer", "choices"))
    try:
        spec = parse_checker(row[task.field("checker")]) if task.field("checker") in row else task.default
    except CheckerError as error:
        raise DataError(f"{where}: {error}") from None
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: {name('prompt')} must be a non-empty string, found {prompt!r:.60}")
    if spec.kind != "multiple_choice":
        if choices is not None and not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
            raise DataError(f"{where}: {name('choices')} must be a list of strings, found {choices!r:.80}")
        if answer is None and spec.kind != "function":
            raise DataError(f"{where}: {name('answer')} must be the reference text, found None")
        try:
            target = target_text(spec, answer, choices)
        except ValueError as error:
            raise DataError(f"{where}: {str(error).replace(repr('answer'), name('answer'), 1)}") from None
        return {"prompt": prompt, "answer": answer, "target": target, "choices": choices, "checker": spec, "row": row}
    if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
        raise DataError(f"{where}: multiple choice needs {name('choices')}, a list of two or more non-empty strings, "
                        f"found {choices!r:.80}")
    if isinstance(answer, str) and answer in choices:
        gold = choices.index(answer)
    elif isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        gold = answer
    else:
        raise DataError(f"{where}: {name('answer')} must be a choice index 0..{len(choices) - 1} or one of the "
                        f"choices, found {answer!r:.60}")
    return {"prompt": prompt, "choices": choices, "gold": gold, "checker": spec, "row": row}


def load_task(task: TaskFile) -> list[dict[str, Any]]:
    """The checked rows of one task file; each doc keeps its ``line``, ``checker`` and raw ``row``."""
    docs: list[dict[str, Any]] = []
    seen: dict[str | int, int] = {}  # id -> the line that has it
    id_field = task.field("id")
    for number, row in iter_json_lines(task.path):
        where = f"{task.path}:{number}"
        doc = _check_row(task, row, where)
        doc_id = row.get(id_field, number)
        if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
            raise DataError(f"{where}: 'id' must be a string or an integer, found {doc_id!r:.60}")
        if doc_id in seen:
            default = "" if id_field in row else " (the line number, as the row has no id)"
            raise DataError(f"{where}: id {doc_id!r}{default} repeats the id of line {seen[doc_id]}; ids must be unique")
        seen[doc_id] = number
        doc["doc_id"], doc["line"] = doc_id, number
        docs.append(doc)
    if not docs:
        raise DataError(f"{task.path}: no rows")
    return docs
