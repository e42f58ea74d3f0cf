"""The steer question: positive text, negative text and strength for a steering vector."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

# Short sentences, not single words: a lone word's residual is dominated by first-position
# effects, and its difference vector (norm ~114 at SmolLM2's L10, vs ~25) wrecks the output.
DEFAULT_POSITIVE = "I love you"
DEFAULT_NEGATIVE = "I hate you"
DEFAULT_STRENGTH = 4.0


@dataclass
class SteerRequest:
    """What the user asked for: prompts on each side (``|`` separates several) and a strength."""

    positive: list[str] = field(default_factory=lambda: [DEFAULT_POSITIVE])
    negative: list[str] = field(default_factory=lambda: [DEFAULT_NEGATIVE])
    strength: float = DEFAULT_STRENGTH


def _texts(value: str) -> list[str]:
    return [text.strip() for text in value.split("|") if text.strip()]


class SteerScreen(ModalScreen[SteerRequest | None]):
    """Three fields; Enter moves to the next one and answers from the last, Esc cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="steer.cancel")]

    def __init__(self, address: str, previous: SteerRequest | None = None) -> None:
        super().__init__()
        self.address = address
        self.previous = previous or SteerRequest()

    def compose(self) -> ComposeResult:
        previous = self.previous
        with Vertical(classes="dialog"):
            yield Static(Text(f"Steer {self.address}: add strength × (positive − negative) mean residual"))
            yield Static("toward (| separates prompts)", classes="dialog-keys")
            yield Input(" | ".join(previous.positive), id="steer-positive")
            yield Static("away from", classes="dialog-keys")
            yield Input(" | ".join(previous.negative), id="steer-negative")
            yield Static("strength", classes="dialog-keys")
            yield Input(f"{previous.strength:g}", id="steer-strength")
            yield Static("", id="steer-problem")

    def on_mount(self) -> None:
        self.query_one("#steer-positive", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id == "steer-positive":
            self.query_one("#steer-negative", Input).focus()
        elif event.input.id == "steer-negative":
            self.query_one("#steer-strength", Input).focus()
        else:
            self.answer()

    def answer(self) -> None:
        """Dismiss with the request, or say in the dialog what to fix."""
        positive = _texts(self.query_one("#steer-positive", Input).value)
        negative = _texts(self.query_one("#steer-negative", Input).value)
        raw = self.query_one("#steer-strength", Input).value.strip()
        try:
            strength = float(raw)
        except ValueError:
            strength = math.nan
        if not positive or not negative:
            problem = "both sides need at least one prompt"
        elif not math.isfinite(strength):
            problem = f"strength must be a number (e.g. 4), not {raw!r}"
        else:
            self.dismiss(SteerRequest(positive, negative, strength))
            return
        self.query_one("#steer-problem", Static).update(Text(problem, style="bold"))

    def action_cancel(self) -> None:
        self.dismiss(None)
