from .cli import command

command(prog_name="python -m durable.bench")
