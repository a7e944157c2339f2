"""Generate and check the committed JSON Schema files in ``schemas/``."""

from __future__ import annotations

from pathlib import Path

import orjson

from shared.events.models import EVENT_MODELS
from shared.settings import REPO_ROOT

SCHEMA_DIR = REPO_ROOT / "schemas"


def render() -> dict[str, bytes]:
    """File name → JSON Schema bytes, one file per event type."""
    out: dict[str, bytes] = {}
    for type_name, model in EVENT_MODELS.items():
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://switchboard.dev/schemas/{type_name}.json"
        out[f"{type_name}.json"] = (
            orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        )
    return out


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Regenerate every schema file, removing ones for types that no longer exist."""
    directory.mkdir(parents=True, exist_ok=True)
    rendered = render()
    for stale in directory.glob("*.json"):
        if stale.name not in rendered:
            stale.unlink()
    paths = []
    for name, content in rendered.items():
        path = directory / name
        path.write_bytes(content)
        paths.append(path)
    return paths


def drift(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that differ from the models (missing, changed or extra)."""
    rendered = render()
    problems = [
        name
        for name, content in rendered.items()
        if not (directory / name).is_file() or (directory / name).read_bytes() != content
    ]
    problems += [p.name for p in directory.glob("*.json") if p.name not in rendered]
    return sorted(problems)
