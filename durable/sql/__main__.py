"""``python -m durable.sql``: regenerate durable/sql/statements.py from the .sql files."""

from pathlib import Path

from . import stub_source

if __name__ == "__main__":
    target = Path(__file__).with_name("statements.py")
    target.write_text(stub_source())
    print(f"wrote {target}")
