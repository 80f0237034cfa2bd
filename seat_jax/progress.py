"""Progress lines (done/total, rate, ETA) for training, evaluation and the demo, from clu.

clu's `periodic_actions.ReportProgress` measures the rate between its triggers, writes
`steps_per_sec` (and `uptime`) to the metric writer and sets the work unit's notes; this subclass
also prints one line per trigger, because the people running these jobs watch a terminal.
"""

import datetime
from collections.abc import Callable

from clu import periodic_actions


class Progress(periodic_actions.ReportProgress):
  """ReportProgress that prints `<what> <done>/<total> (<pct>%) <details> | <rate> | ETA <eta>`.

  Call it after every unit of work with the number done so far (`progress(count)`); the first
  call only starts the clock. It triggers every `every_steps` units or `every_secs` seconds and at
  `total`. `details(count)` adds text (e.g. the latest losses) to the printed line.
  """

  def __init__(self, what: str, total: int | None, *, unit: str = "steps", writer=None,
               every_steps: int | None = None, every_secs: float | None = None,
               on_steps=(), details: Callable[[int], str] = lambda _: "",
               enabled: bool = True):
    super().__init__(num_train_steps=total, writer=writer, every_steps=every_steps,
                     every_secs=every_secs, on_steps=on_steps)
    self._what, self._total, self._unit = what, total, unit
    self._details, self._enabled = details, enabled

  def _apply(self, step: int, t: float) -> None:
    rate = (step - self._previous_step) / max(t - self._previous_time, 1e-9)
    super()._apply(step, t)
    if not self._enabled:
      return
    details = self._details(step)
    done = f"{step}"
    eta = ""
    if self._total:
      done += f"/{self._total} ({100 * step / self._total:.0f}%)"
      eta = f" | ETA {datetime.timedelta(seconds=round((self._total - step) / max(rate, 1e-9)))}"
    print(f"{self._what} {done}{' ' + details if details else ''} | {rate:.2f} {self._unit}/s"
          f"{eta}", flush=True)
