"""Modal dialogs: confirmation, the signal form, help."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from ..data import check_json


class ConfirmDialog(ModalScreen[bool]):
    """Yes / no; ``y`` and ``n`` (or escape) answer from the keyboard."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="question")
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", variant="primary", id="yes")
                yield Button("No (n)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


@dataclass(frozen=True, slots=True)
class SignalRequest:
    name: str
    payload: str  # compact JSON text
    dedup_key: str | None


class SignalDialog(ModalScreen[SignalRequest | None]):
    """Name, JSON payload and optional dedup key of a signal; checked before it is returned."""

    BINDINGS = [Binding("escape", "close", "Close")]

    def __init__(self, instance_id: int, awaits: str) -> None:
        super().__init__()
        self.instance_id = instance_id
        self.awaits = awaits

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            hint = f" (it awaits {self.awaits!r})" if self.awaits else ""
            yield Label(f"Signal #{self.instance_id}{hint}", classes="question")
            yield Input(value=self.awaits, placeholder="signal name", id="name")
            yield Input(value="", id="payload", placeholder='payload JSON, e.g. {"amount": 100} (empty = null)')
            yield Input(value="", placeholder="dedup key (optional)", id="dedup")
            yield Static("", id="error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Send", variant="primary", id="send")
                yield Button("Close", id="close")

    def on_mount(self) -> None:
        self.query_one("#payload" if self.awaits else "#name", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "send":
            self.submit()
        else:
            self.dismiss(None)

    def submit(self) -> None:
        name = self.query_one("#name", Input).value.strip()
        error = self.query_one("#error", Static)
        if not name:
            error.update("a signal needs a name")
            return
        try:
            payload = check_json(self.query_one("#payload", Input).value.strip())
        except ValueError as exc:
            error.update(str(exc))
            return
        dedup = self.query_one("#dedup", Input).value.strip() or None
        self.dismiss(SignalRequest(name, payload, dedup))

    def action_close(self) -> None:
        self.dismiss(None)


HELP = """\
[b]durable console[/b] — live view of queues, workers and instances (refreshes about once a second)

[b]Everywhere[/b]
  ?         this help                 q / ctrl+q   quit
  escape    back to the previous screen
  tab       next table / field        mouse        click rows, headers, buttons

[b]Queues[/b] (home)
  enter     instances of the selected queue
  i         all instances             w            focus the workers table
  Saturation is in flight / concurrency and buffered / prefetch summed over live workers; a worker
  whose heartbeat is older than the gone threshold is shown as [b red]gone[/].

[b]Instances[/b]
  /         edit the filter: queue:orders status:failed,cancelled machine:Checkout version:1
            key:<partition key> unique:<unique key> id:12,13 parent:3 (a bare number = id)
  o         sort by id / updated      r            reverse the order   (or click a header)
  n / →     next page                 p / ←        previous page
  enter     open the instance

[b]Instance[/b]
  s         send a signal             R            retry a failed/cancelled instance now
  x         cancel                    u            open the parent
  enter     open the selected child   f            follow the history live on/off
  Every action asks for confirmation.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help"):
            yield Static(HELP)
            with Horizontal(classes="buttons"):
                yield Button("Close", id="close")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)
