"""A progress bar in tokens that moves from a run's first model forward.

With a live stream most of a run is the model forward that fills each shuffle buffer, and
nothing is served until a buffer is full: the first one takes minutes on a CPU, during which a
bar counting steps or written shards sits at 0. This bar counts tokens and advances with
whichever is further along: the rows the stream has captured (reported after every model
forward through `BaseStream.on_capture`) or the tokens consumed (steps trained, rows written).
The rate is the mean since the start (tqdm smoothing 0): buffer fills and bursts of steps
alternate, so a recent-window rate would swing between them, while the mean gives the ETA of
the whole run.
"""

from __future__ import annotations

from tqdm import tqdm

from saekit.activations.stream import BaseStream


class TokenProgress:
    """tqdm over the tokens of a run: `capture(rows)` from the stream, `consume(tokens)` from
    the loop that uses them; the bar shows the further of the two (at most `total`)."""

    def __init__(
        self,
        total: int,
        desc: str,
        done: int = 0,
        disable: bool = False,
        capture_scale: int = 1,
    ) -> None:
        """done: tokens already consumed (a resumed run); capture_scale: processes that capture
        as this one does (data-parallel ranks each capture their share)."""
        self.total = total
        self.consumed = self.captured = done
        self.capture_scale = capture_scale
        self.filling = False
        """The postfix says a buffer is being filled (cleared once its rows are used)."""
        self.bar = tqdm(
            total=total,
            initial=done,
            desc=desc,
            unit="tok",
            unit_scale=True,
            smoothing=0,
            disable=disable,
        )

    def capture(self, rows: int) -> None:
        """The stream captured `rows` rows into the buffer it is filling."""
        if self.captured <= self.consumed:
            self.bar.set_postfix_str("filling the shuffle buffer", refresh=False)
            self.filling = True
        self.captured += rows * self.capture_scale
        self._advance()

    def consume(self, tokens: int, status: str | None = None) -> None:
        """`tokens` were used (trained on, written); `status` replaces the bar's postfix."""
        self.consumed += tokens
        if status is not None or self.filling:
            self.bar.set_postfix_str(status or "", refresh=False)
            self.filling = False
        self._advance()

    def _advance(self) -> None:
        target = min(self.total, max(self.consumed, self.captured))
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)

    def watch(self, stream: BaseStream) -> None:
        """Report `stream`'s captures to this bar until `close`."""
        self._stream = stream
        stream.on_capture = self.capture

    def close(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.on_capture = None
        self.bar.close()
