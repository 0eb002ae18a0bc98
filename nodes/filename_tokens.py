"""The tokens of ComfyUI's save path in ``filename_prefix``, replaced on the server.

For its own save nodes, ComfyUI's frontend replaces ``%date:yyyy-MM-dd%`` (and ``%Node title.widget%``)
before queueing, and the server's ``folder_paths.get_save_image_path`` replaces ``%year%``, ``%month%``,
``%day%``, ``%hour%``, ``%minute%``, ``%second%``, ``%width%`` and ``%height%``. The frontend does not do
this for a custom pack's save node, so PVTT does both here:

- ``%date:FORMAT%`` with the frontend's fields: ``yyyy`` ``yy`` (year), ``MM`` ``M`` (month), ``dd`` ``d``
  (day), ``hh`` ``h`` (hour, 24-hour clock), ``mm`` ``m`` (minute), ``ss`` ``s`` (second); other characters
  are kept as they are (``%date:yyyy-MM-dd%`` gives ``2026-12-03``);
- ``%year%`` ``%month%`` ``%day%`` ``%hour%`` ``%minute%`` ``%second%`` (two digits but the year);
- ``%width%`` ``%height%`` (the saved clip's size).

Any other ``%...%`` text is left as written. Times are the server's local time, as in ComfyUI.
"""

from __future__ import annotations

import re
import time

_DATE = re.compile(r"%date:([^%]+)%")
_FIELDS = re.compile(r"yyyy|yy|MM|M|dd|d|hh|h|mm|m|ss|s")


def _format_date(fmt: str, now: time.struct_time) -> str:
    values = {"yyyy": f"{now.tm_year:04d}", "yy": f"{now.tm_year % 100:02d}", "MM": f"{now.tm_mon:02d}",
              "M": str(now.tm_mon), "dd": f"{now.tm_mday:02d}", "d": str(now.tm_mday), "hh": f"{now.tm_hour:02d}",
              "h": str(now.tm_hour), "mm": f"{now.tm_min:02d}", "m": str(now.tm_min), "ss": f"{now.tm_sec:02d}",
              "s": str(now.tm_sec)}
    return _FIELDS.sub(lambda m: values[m.group(0)], fmt)


def expand_tokens(prefix: str, width: int = 0, height: int = 0, now: time.struct_time | None = None) -> str:
    """``prefix`` with its date, time and size tokens replaced (see the module docstring)."""
    if "%" not in prefix:
        return prefix
    now = now or time.localtime()
    prefix = _DATE.sub(lambda m: _format_date(m.group(1), now), prefix)
    for token, value in (("%width%", str(width)), ("%height%", str(height)), ("%year%", str(now.tm_year)),
                         ("%month%", f"{now.tm_mon:02d}"), ("%day%", f"{now.tm_mday:02d}"),
                         ("%hour%", f"{now.tm_hour:02d}"), ("%minute%", f"{now.tm_min:02d}"),
                         ("%second%", f"{now.tm_sec:02d}")):
        prefix = prefix.replace(token, value)
    return prefix
