"""One small writer per report format (JSON, JSONL, xlsx; HTML in html_writer, loaded only at the
end as it needs matplotlib), all writing atomically."""
from evals.plugin.writers.atomic import atomic_path
from evals.plugin.writers.json_writer import write_json
from evals.plugin.writers.jsonl_writer import write_jsonl
from evals.plugin.writers.xlsx_writer import write_xlsx

__all__ = ["atomic_path", "write_json", "write_jsonl", "write_xlsx"]
