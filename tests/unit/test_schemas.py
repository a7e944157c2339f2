"""schemas/ is generated from the models; drift fails the build."""

from __future__ import annotations

from pathlib import Path

from shared.events import EVENT_MODELS
from shared.events.schema_export import SCHEMA_DIR, drift, write


def test_committed_schemas_match_the_models() -> None:
    assert drift() == [], "run `switchboard schemas generate` and commit schemas/"


def test_drift_check_notices_a_changed_missing_or_extra_file(tmp_path: Path) -> None:
    write(tmp_path)
    assert drift(tmp_path) == []
    inbound = tmp_path / "message.inbound.json"
    inbound.write_text(inbound.read_text().replace('"sender_id"', '"sender"'))
    (tmp_path / "message.status.json").unlink()
    (tmp_path / "old.event.json").write_text("{}")
    assert drift(tmp_path) == ["message.inbound.json", "message.status.json", "old.event.json"]


def test_there_is_one_schema_file_per_event_type() -> None:
    assert sorted(p.name for p in SCHEMA_DIR.glob("*.json")) == sorted(
        f"{t}.json" for t in EVENT_MODELS
    )
