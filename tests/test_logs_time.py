"""JSON logs carry ISO-8601 UTC timestamps to the millisecond, whatever the local time zone."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from flockrt.logs import JsonFormatter, configure_logging, unconfigure_logging

ROOT = Path(__file__).resolve().parent.parent
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def test_a_record_time_is_iso_8601_utc_with_milliseconds() -> None:
    record = logging.LogRecord("flockrt.test", logging.INFO, __file__, 1, "hello", None, None)
    record.created = datetime(2026, 12, 7, 13, 51, 2, 123456, tzinfo=UTC).timestamp()
    entry = json.loads(JsonFormatter().format(record))
    assert entry["time"] == "2026-12-07T13:51:02.123Z"
    assert (entry["level"], entry["logger"], entry["message"]) == ("INFO", "flockrt.test", "hello")


def test_configured_json_logging_writes_utc_times_that_parse() -> None:
    stream = io.StringIO()
    configure_logging("INFO", format="json", stream=stream)
    try:
        before = datetime.now(UTC)
        logging.getLogger("flockrt.test").info("one line")
        after = datetime.now(UTC)
    finally:
        unconfigure_logging()
    (line,) = stream.getvalue().splitlines()
    stamp = json.loads(line)["time"]
    assert ISO_UTC.match(stamp), stamp
    parsed = datetime.fromisoformat(stamp)  # "Z" parses as UTC on 3.11
    assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= parsed <= after


def test_the_local_time_zone_does_not_leak_in() -> None:
    code = (
        "import json, logging\n"
        "from flockrt.logs import JsonFormatter\n"
        "r = logging.LogRecord('x', 20, 'f', 1, 'm', None, None)\n"
        "r.created = 0.25\n"
        "print(json.loads(JsonFormatter().format(r))['time'])\n"
    )
    env = {**os.environ, "TZ": "Pacific/Kiritimati", "PYTHONPATH": str(ROOT)}  # UTC+14
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "1970-01-01T00:00:00.250Z"
