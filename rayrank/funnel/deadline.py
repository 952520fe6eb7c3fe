"""When will a stage answer? An estimate from its measured service times and the work queued at it.

The online funnel asks this before sending a request to a costly stage (the cross-encoder, the LLM):
if the stage's queue cannot drain in the time left of the request's `latency_budget_ms`, the request
is answered from the previous stage instead. Work is counted in documents (pairs), the unit a
reranker's cost grows with: a stage that has `pending` documents queued or in service, and scores
documents at `seconds_per_document`, finishes a new request of `n` documents after about
`(pending + n) * seconds_per_document / replicas`.

`seconds_per_document` is a quantile of the recent engine calls' seconds / documents. Calls made under
load are batched and cheaper per document than lone ones, so an idle stage's estimate errs on the
slow side; a stage that has not answered yet is assumed instant (there is nothing to go by, and its
first answers are what it learns from).
"""

from __future__ import annotations

from collections import deque

import numpy as np


class StageClock:
    """One stage's recent service times and its pending documents, as seen by whoever sends it work.

    Example:
        >>> clock = StageClock()
        >>> clock.observe(seconds=0.2, documents=20)        # one engine call: 10 ms a document
        >>> clock.start(20); clock.start(20)                 # two requests queued or in service
        >>> round(clock.predict(documents=20), 3)            # a third waits for both, then runs
        0.6
        >>> clock.fits(documents=20, remaining_s=0.5), clock.fits(documents=20, remaining_s=1.0)
        (False, True)
    """

    def __init__(self, window: int = 64, quantile: float = 0.5, replicas: int = 1) -> None:
        if window < 1 or not 0 <= quantile <= 1 or replicas < 1:
            raise ValueError(f"window and replicas must be positive and quantile in [0, 1], got window={window}, "
                             f"quantile={quantile}, replicas={replicas}.")
        self._rates: deque[float] = deque(maxlen=window)
        self.quantile, self.replicas = quantile, replicas
        self.pending = 0

    def observe(self, seconds: float, documents: int) -> None:
        """One engine call's service time (no queueing) over the documents it scored."""
        if documents > 0 and seconds >= 0:
            self._rates.append(seconds / documents)

    def start(self, documents: int) -> None:
        """A request of `documents` was sent to the stage."""
        self.pending += documents

    def finish(self, documents: int) -> None:
        """A request sent with `start` was answered, failed or was given up on."""
        self.pending = max(0, self.pending - documents)

    @property
    def seconds_per_document(self) -> float:
        return float(np.quantile(self._rates, self.quantile)) if self._rates else 0.0

    def predict(self, documents: int) -> float:
        """Seconds until a request of `documents` sent now is answered: the queue ahead of it, then itself."""
        return (self.pending + documents) * self.seconds_per_document / self.replicas

    def fits(self, documents: int, remaining_s: float) -> bool:
        """Whether a request of `documents` sent now is expected back within `remaining_s`."""
        return self.predict(documents) <= remaining_s
